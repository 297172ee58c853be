// postern in front of the private Postfix/Dovecot: STARTTLS listener YAML, the per-run PKI, and
// small readers for what postern logged about one client address.
import { chown, mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { stringify } from 'yaml';
import { makePki, type CertFiles, type TestPki } from '../../helpers/certs.ts';
import { startPostern, type LogLine, type RunningPostern } from '../../helpers/postern.ts';
import { freePorts } from './ports.ts';
import { lookupUser } from './system.ts';

/** The name every listener serves; its certificate covers only this name (not the bare domain). */
export const HOSTNAME = 'mail.example.org';
/** A second loaded certificate, listed first: a "first certificate" default would serve it. */
export const OTHER_NAME = 'other.example.net';

/** Programs the STARTTLS end-to-end files use; each file requires them in beforeAll (fail, never skip). */
export const PROGRAMS = ['postfix', 'dovecot', 'doveadm', 'swaks', 'openssl', 'curl'] as const;

export interface StarttlsListenerSpec {
  name: string;
  protocol: 'smtp' | 'imap' | 'pop3';
  /** Required for smtp (mx: sni fallback, plaintext allowed; submission: sni strict, TLS required); none for imap/pop3. */
  role?: 'mx' | 'submission';
  backendPort: number;
  sni?: 'strict' | 'fallback';
  requireTls?: boolean;
  /** capabilities.fallback: what postern announces while its probe of the backend fails. */
  fallbackCapabilities?: string[];
  greeting?: string;
  /** timeouts.handshake (accept -> finished handshake, pre-TLS dialogue included). */
  handshake?: string;
}

export interface StackPki {
  pki: TestPki;
  /** Covers HOSTNAME only. */
  hostCert: CertFiles;
  /** Covers OTHER_NAME only. */
  otherCert: CertFiles;
}

/** A per-run CA with the two certificates postern loads (the other one first). */
export async function makeStackPki(): Promise<StackPki> {
  const pki = await makePki();
  const otherCert = await pki.issue('other', { names: [OTHER_NAME] });
  const hostCert = await pki.issue('mail', { names: [HOSTNAME] });
  return { pki, hostCert, otherCert };
}

export interface PosternStack {
  postern: RunningPostern;
  port(listener: string): number;
}

/** Starts postern (after the backends: its capability probe runs before it listens). */
export async function startStarttlsPostern(certs: StackPki, listeners: StarttlsListenerSpec[]): Promise<PosternStack> {
  const { pki, hostCert, otherCert: other } = certs;
  const ports = await freePorts(listeners.length);
  const config = {
    log: { level: 'debug' },
    certificates: [other, hostCert].map((c) => ({ cert: c.cert, key: c.key })),
    listeners: listeners.map((l, i) => ({
      name: l.name,
      listen: `127.0.0.1:${ports[i]}`,
      protocol: l.protocol,
      tls: 'starttls',
      ...(l.role ? { role: l.role } : {}),
      hostname: HOSTNAME,
      ...(l.sni ? { sni: l.sni } : {}),
      backend: { address: `127.0.0.1:${l.backendPort}`, proxyProtocol: 'v2' },
      ...(l.handshake ? { timeouts: { handshake: l.handshake } } : {}),
      ...(l.greeting ? { greeting: l.greeting } : {}),
      ...(l.requireTls !== undefined ? { requireTls: l.requireTls } : {}),
      ...(l.fallbackCapabilities ? { capabilities: { fallback: l.fallbackCapabilities } } : {}),
    })),
  };
  const postern = await startPostern(pki.dir, stringify(config));
  return { postern, port: (name) => postern.port(name) };
}

/**
 * Postfix settings that make it offer STARTTLS itself, as a real MX does (postern must hide and
 * refuse it after TLS), with a message_size_limit that no default list contains, and HELO/EHLO
 * required before MAIL. smtpd needs the tlsmgr service for TLS (without it: "no entropy for TLS
 * key generation: disabling TLS support").
 */
export function postfixTls(cert: CertFiles, messageSizeLimit: number): { mainCfExtra: string; masterCfExtra: string } {
  return {
    mainCfExtra: [
      'smtpd_tls_security_level = may',
      `smtpd_tls_cert_file = ${cert.cert}`,
      `smtpd_tls_key_file = ${cert.key}`,
      `message_size_limit = ${messageSizeLimit}`,
      'smtpd_helo_required = yes',
      '',
    ].join('\n'),
    masterCfExtra: 'tlsmgr    unix  - - n 1000? 1 tlsmgr\n',
  };
}

/** postern's warn lines about bytes discarded after STARTTLS, for one client address. */
export function injectionWarnings(postern: RunningPostern, client: string): LogLine[] {
  return postern.logs.filter((l) => l.level === 'warn' && l.msg.startsWith('discarded bytes sent after STARTTLS') && l.client === client);
}

/** The value of postern_starttls_injections_total for a listener. */
export async function injectionCount(postern: RunningPostern, listener: string): Promise<number> {
  const m = await postern.daemon.metrics.starttlsInjections.get();
  return m.values.find((v) => v.labels.listener === listener)?.value ?? 0;
}

/** The summary line of the (next) closed connection from `client` on `listener`. */
export function summaryFor(postern: RunningPostern, listener: string, client: string, timeoutMs = 10_000): Promise<LogLine> {
  return postern.summary((l) => l.listener === listener && l.client === client, timeoutMs);
}

/** Puts a message into a Dovecot user's maildir (new/), as a local delivery agent would. */
export async function deliverToMaildir(dovecotDir: string, user: string, name: string, text: string): Promise<void> {
  const mail = lookupUser('mail');
  const box = path.join(dovecotDir, 'mail', user);
  for (const sub of ['', 'cur', 'new', 'tmp']) {
    const d = path.join(box, sub);
    await mkdir(d, { recursive: true, mode: 0o700 });
    await chown(d, mail.uid, mail.gid);
  }
  const file = path.join(box, 'new', name);
  await writeFile(file, text, { mode: 0o600 });
  await chown(file, mail.uid, mail.gid);
}
