// One running postern with one listener in front of a recording backend, torn down when the
// current test finishes (pass or fail). Integration tests call this once per test.
import { onTestFinished } from 'vitest';
import { startPostern, type RunningPostern } from './postern.ts';
import { startBackend, type BackendMode, type RecordingBackend } from './backend.ts';
import { configYaml, type ListenerSpec } from './config-yaml.ts';
import { freePort } from './ports.ts';
import type { TestPki } from './certs.ts';

export interface Scenario {
  postern: RunningPostern;
  /** The recording backend, or null when the test supplied its own backend port. */
  backend: RecordingBackend | null;
  /** The listener's bound port. */
  port: number;
  yaml: string;
}

export interface ScenarioOptions {
  certs: Array<{ cert: string; key: string }>;
  listener: Omit<ListenerSpec, 'port' | 'backendPort'> & { backendPort?: number };
  /** Recording backend settings; ignored when listener.backendPort is given. */
  backend?: { mode?: BackendMode; greeting?: string };
  level?: 'debug' | 'info';
}

export async function scenario(pki: TestPki, opts: ScenarioOptions): Promise<Scenario> {
  let backend: RecordingBackend | null = null;
  let backendPort = opts.listener.backendPort;
  if (backendPort === undefined) {
    backend = await startBackend({ mode: opts.backend?.mode ?? 'echo', greeting: opts.backend?.greeting, proxy: (opts.listener.proxyProtocol ?? 'v2') !== 'none' });
    backendPort = backend.port;
    const b = backend;
    onTestFinished(() => b.close());
  }
  const port = await freePort();
  const yaml = configYaml({ certs: opts.certs, level: opts.level ?? 'debug', listeners: [{ ...opts.listener, name: 'l', port, backendPort }] });
  const postern = await startPostern(pki.dir, yaml);
  onTestFinished(() => postern.stop());
  return { postern, backend, port: postern.port('l'), yaml };
}
