// The deployment examples under examples/: every YAML file parses (and means the same to YAML 1.1
// readers such as Kubernetes as to YAML 1.2 ones), the compose file and the Kubernetes objects
// have the structure the README promises, and the postern configs they carry are valid: loaded
// as is, the only errors are the certificate files that do not exist on this machine; loaded
// with generated certificates in their place, they compile and every listener hostname is
// covered. No Docker engine runs here: `docker compose config` is run only where it exists.
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { join, relative, resolve, posix } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseAllDocuments, parseDocument } from 'yaml';
import { loadConfigText } from '../../src/config/load.ts';
import { checkCertificates } from '../../src/config/certificates.ts';
import { parseCidr, parseDuration, parseHostPort, validateDocument } from '../../src/config/schema.ts';
import { inNetworks } from '../../src/net/address.ts';
import { makePki, type TestPki } from '../helpers/certs.ts';

const ROOT = join(import.meta.dirname, '..', '..');
const EXAMPLES = join(ROOT, 'examples');
const COMPOSE_FILE = join(EXAMPLES, 'docker-compose.yml');
const POSTERN_FILE = join(EXAMPLES, 'postern', 'postern.yaml');
const K8S = join(EXAMPLES, 'kubernetes');

/** The public mail ports both setups serve. */
const MAIL_PORTS = [25, 465, 587, 143, 993, 110, 995];

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);
function obj(v: unknown, what: string): Obj {
  if (!isObj(v)) throw new Error(`${what}: expected a mapping, got ${JSON.stringify(v)}`);
  return v;
}
function list(v: unknown, what: string): unknown[] {
  if (!Array.isArray(v)) throw new Error(`${what}: expected a list, got ${JSON.stringify(v)}`);
  return v;
}
const str = (v: unknown, what: string): string => {
  if (typeof v !== 'string') throw new Error(`${what}: expected a string, got ${JSON.stringify(v)}`);
  return v;
};

/** Computed on first use, so that a broken example fails its tests rather than the collection. */
function lazy<T>(f: () => T): () => T {
  let done = false;
  let value: T;
  return () => {
    if (!done) {
      value = f();
      done = true;
    }
    return value;
  };
}

function yamlFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true })
    .flatMap((e) => (e.isDirectory() ? yamlFiles(join(dir, e.name)) : /\.ya?ml$/.test(e.name) ? [join(dir, e.name)] : []))
    .sort();
}

/** Every document of a file as plain values; throws with the parser's messages on any error. */
function documents(file: string, version: '1.1' | '1.2' = '1.2'): unknown[] {
  const docs = parseAllDocuments(readFileSync(file, 'utf8'), { version, uniqueKeys: true, prettyErrors: true });
  const problems = docs.flatMap((d) => [...d.errors, ...d.warnings]).map((e) => e.message);
  if (problems.length > 0) throw new Error(`${file} (YAML ${version}):\n${problems.join('\n')}`);
  return docs.map((d) => d.toJS({ maxAliasCount: 100 }) as unknown);
}

// ---------------------------------------------------------------------------------------------
// postern configs: as written (certificates missing) and with generated certificates

interface PosternExample {
  name: string;
  /** Where the text is said to live: relative paths in it would resolve from here. */
  file: string;
  text: () => string;
}

/** postern.yaml as embedded in the ConfigMap. */
function configMapText(): string {
  const configMap = documents(join(K8S, 'configmap.yaml')).map((d) => obj(d, 'configmap.yaml')).find((d) => d.kind === 'ConfigMap');
  return str(obj(obj(configMap, 'ConfigMap').data, 'ConfigMap data')['postern.yaml'], 'ConfigMap data postern.yaml');
}

const POSTERN_EXAMPLES: PosternExample[] = [
  { name: 'examples/postern/postern.yaml', file: POSTERN_FILE, text: () => readFileSync(POSTERN_FILE, 'utf8') },
  { name: 'examples/kubernetes/configmap.yaml (postern.yaml)', file: join(K8S, 'postern.yaml'), text: configMapText },
];

/** The raw (schema-validated) document of a postern config. */
function rawConfig(text: string) {
  const v = validateDocument(parseDocument(text).toJS());
  if (!v.ok) throw new Error(v.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('\n'));
  return v.value;
}

const CERT_FIELD = /^certificates\[\d+\]\.(cert|key|dir|pem)$/;
const MISSING = /^(file not found|folder not found|cannot read)\b/;

describe('every YAML file under examples/', () => {
  const files = yamlFiles(EXAMPLES);

  it('includes the compose file, its postern config and the Kubernetes objects', () => {
    const rel = files.map((f) => relative(EXAMPLES, f).split('\\').join('/'));
    expect(rel).toEqual(
      expect.arrayContaining([
        'docker-compose.yml',
        'postern/postern.yaml',
        'kubernetes/deployment.yaml',
        'kubernetes/service.yaml',
        'kubernetes/configmap.yaml',
        'kubernetes/secret.example.yaml',
      ]),
    );
  });

  it.each(files.map((f) => [relative(EXAMPLES, f), f]))('%s parses without errors or warnings, every document a mapping', (_name, file) => {
    const docs = documents(file);
    expect(docs.length).toBeGreaterThan(0);
    for (const d of docs) expect(isObj(d)).toBe(true);
  });

  // Kubernetes (sigs.k8s.io/yaml) reads YAML 1.1, where 0440 is octal, `25:25` is a base-60
  // number and yes/no/on/off are booleans; postern and the yaml package read YAML 1.2.
  it.each(files.map((f) => [relative(EXAMPLES, f), f]))('%s means the same in YAML 1.1 and 1.2', (_name, file) => {
    expect(documents(file, '1.1')).toEqual(documents(file, '1.2'));
  });
});

describe('postern configs in the examples', () => {
  let pki: TestPki;
  beforeAll(async () => {
    pki = await makePki();
  });
  afterAll(() => {
    if (pki) rmSync(pki.dir, { recursive: true, force: true });
  });

  for (const ex of POSTERN_EXAMPLES) {
    describe(ex.name, () => {
      it('passes the schema and the whole-document checks; the only errors are certificate files missing here', () => {
        rawConfig(ex.text());
        const r = loadConfigText(ex.text(), ex.file);
        if (r.ok) return; // the certificates happen to exist on this machine
        expect(r.errors.length).toBeGreaterThan(0);
        for (const e of r.errors) {
          expect({ path: e.path, message: e.message }).toEqual({ path: expect.stringMatching(CERT_FIELD), message: expect.stringMatching(MISSING) });
        }
      });

      it('compiles with generated certificates in place of the real ones, every listener hostname covered', async () => {
        const raw = rawConfig(ex.text());
        const names = [...new Set(raw.listeners.flatMap((l) => [l.hostname, ...(l.routes ?? []).flatMap((r) => r.serverNames)]))];
        const issued = await pki.issue(`example-${Math.random().toString(36).slice(2)}`, { names });
        const doc = parseDocument(ex.text());
        const certificates = (raw.certificates ?? []).map((c) => {
          if (c.dir === undefined) return { cert: issued.cert, key: issued.key };
          // The certbot layout: <dir>/<name>/fullchain.pem + privkey.pem
          const live = mkdtempSync(join(pki.dir, 'live-'));
          mkdirSync(join(live, names[0]!));
          writeFileSync(join(live, names[0]!, 'fullchain.pem'), readFileSync(issued.cert));
          writeFileSync(join(live, names[0]!, 'privkey.pem'), readFileSync(issued.key));
          return { dir: live };
        });
        doc.set('certificates', certificates);
        const r = loadConfigText(doc.toString(), ex.file);
        if (!r.ok) throw new Error(r.errors.map((e) => `${e.path}: ${e.message}`).join('\n'));
        const certs = checkCertificates(r.loaded);
        expect(certs.errors).toEqual([]);
        expect(r.loaded.config.admin).not.toBeNull();
        expect(r.loaded.config.listeners.map((l) => l.listen.port).sort((a, b) => a - b)).toEqual([...MAIL_PORTS].sort((a, b) => a - b));
        for (const l of r.loaded.config.listeners) expect(l.backend.proxyProtocol).toBe('v2');
      });
    });
  }
});

// ---------------------------------------------------------------------------------------------
// docker-compose.yml

/** Keys of the Compose specification used to catch misspellings (a YAML schema check). */
const COMPOSE_TOP = new Set(['name', 'version', 'services', 'networks', 'volumes', 'configs', 'secrets', 'include', 'models']);
const COMPOSE_SERVICE = new Set(
  `annotations attach blkio_config build cap_add cap_drop cgroup cgroup_parent command configs container_name cpu_count
  cpu_percent cpu_period cpu_quota cpu_rt_period cpu_rt_runtime cpu_shares cpus cpuset credential_spec depends_on deploy
  develop device_cgroup_rules devices dns dns_opt dns_search domainname entrypoint env_file environment expose extends
  external_links extra_hosts gpus group_add healthcheck hostname image init ipc isolation label_file labels links logging
  mac_address mem_limit mem_reservation mem_swappiness memswap_limit models network_mode networks oom_kill_disable
  oom_score_adj pid pids_limit platform ports post_start pre_stop privileged profiles provider pull_policy read_only
  restart runtime scale secrets security_opt shm_size stdin_open stop_grace_period stop_signal storage_opt sysctls tmpfs
  tty ulimits use_api_socket user userns_mode uts volumes volumes_from working_dir`.split(/\s+/),
);
const COMPOSE_HEALTHCHECK = new Set(['test', 'interval', 'timeout', 'retries', 'start_period', 'start_interval', 'disable']);

interface PortMapping {
  hostIp: string | null;
  published: number | null;
  target: number;
}

/** "25", "25:25", "0.0.0.0:25:25", "127.0.0.1:9900:9900/tcp" or the long syntax. */
function portMapping(p: unknown): PortMapping {
  if (isObj(p)) return { hostIp: (p.host_ip as string | undefined) ?? null, published: p.published === undefined ? null : Number(p.published), target: Number(p.target) };
  const text = String(p).replace(/\/(tcp|udp)$/, '');
  const parts = text.split(':');
  const target = Number(parts.pop());
  const published = parts.length > 0 ? Number(parts.pop()) : null;
  return { hostIp: parts.length > 0 ? parts.join(':').replace(/^\[|\]$/g, '') : null, published, target };
}

interface Mount {
  source: string;
  target: string;
  readOnly: boolean;
}

/** "./a:/b:ro" or the long syntax; bind sources resolved against examples/. */
function mount(v: unknown): Mount {
  if (isObj(v)) {
    const source = str(v.source, 'volume source');
    return { source: source.startsWith('.') ? resolve(EXAMPLES, source) : source, target: str(v.target, 'volume target'), readOnly: v.read_only === true };
  }
  const [source = '', target = '', mode = ''] = str(v, 'volume').split(':');
  return { source: source.startsWith('.') ? resolve(EXAMPLES, source) : source, target, readOnly: mode.split(',').includes('ro') };
}

describe('examples/docker-compose.yml', () => {
  const compose = lazy(() => obj(documents(COMPOSE_FILE)[0], 'compose file'));
  const services = lazy(() => obj(compose().services, 'services'));
  const postern = lazy(() => obj(services().postern, 'services.postern'));
  const config = lazy(() => rawConfig(readFileSync(POSTERN_FILE, 'utf8')));
  const adminPort = () => config().admin!.listen.port;

  it('uses only keys of the Compose specification', () => {
    for (const key of Object.keys(compose())) if (!key.startsWith('x-')) expect(COMPOSE_TOP, `top-level key "${key}"`).toContain(key);
    for (const [name, svc] of Object.entries(services())) {
      for (const key of Object.keys(obj(svc, name))) if (!key.startsWith('x-')) expect(COMPOSE_SERVICE, `services.${name}.${key}`).toContain(key);
      const hc = obj(svc, name).healthcheck;
      if (hc !== undefined) for (const key of Object.keys(obj(hc, 'healthcheck'))) expect(COMPOSE_HEALTHCHECK, `services.${name}.healthcheck.${key}`).toContain(key);
    }
  });

  it('has the services postern, postfix and dovecot, postern built from the repository Dockerfile', () => {
    expect(Object.keys(services())).toEqual(expect.arrayContaining(['postern', 'postfix', 'dovecot']));
    const build = postern().build;
    const context = typeof build === 'string' ? build : str(obj(build, 'build').context, 'build.context');
    expect(resolve(EXAMPLES, context)).toBe(resolve(ROOT));
    expect(existsSync(join(ROOT, 'Dockerfile'))).toBe(true);
  });

  it('publishes every mail port to the listener of the same port, and the admin port on loopback at most', () => {
    const ports = list(postern().ports, 'postern.ports').map(portMapping);
    for (const port of MAIL_PORTS) {
      expect(ports, `port ${port}`).toContainEqual(expect.objectContaining({ published: port, target: port }));
    }
    expect(config().listeners.map((l) => l.listen.port).sort((a, b) => a - b)).toEqual([...MAIL_PORTS].sort((a, b) => a - b));
    for (const p of ports.filter((p) => p.target === adminPort())) expect(p.hostIp === '127.0.0.1' || p.hostIp === '::1', `admin port published on ${p.hostIp ?? 'every address'}`).toBe(true);
    // No other service is published: only postern talks to Postfix and Dovecot.
    for (const name of ['postfix', 'dovecot']) expect(obj(services()[name], name).ports).toBeUndefined();
  });

  it('mounts the config read-only where the image looks for it', () => {
    const cmd = /^CMD\s+(\[.*\])\s*$/m.exec(readFileSync(join(ROOT, 'Dockerfile'), 'utf8'));
    const args = JSON.parse(cmd![1]!) as string[];
    const imageConfig = args[args.indexOf('-c') + 1]!;
    const mounts = list(postern().volumes, 'postern.volumes').map(mount);
    const m = mounts.find((v) => imageConfig === v.target || imageConfig.startsWith(`${v.target}/`));
    expect(m, `a mount providing ${imageConfig}`).toBeDefined();
    expect(m!.readOnly).toBe(true);
    expect(join(m!.source, posix.relative(m!.target, imageConfig))).toBe(POSTERN_FILE);
  });

  it('mounts every certificate path of the config read-only', () => {
    const mounts = list(postern().volumes, 'postern.volumes').map(mount);
    const paths = (config().certificates ?? []).flatMap((c) => [c.cert, c.key, c.dir, c.pem].filter((p): p is string => p !== undefined));
    expect(paths.length).toBeGreaterThan(0);
    for (const p of paths) {
      expect(posix.isAbsolute(p), p).toBe(true);
      const m = mounts.find((v) => p === v.target || p.startsWith(`${v.target}/`));
      expect(m, `a mount providing ${p}`).toBeDefined();
      expect(m!.readOnly, `${m!.target} read-only`).toBe(true);
    }
  });

  it('checks /readyz on the admin port with node (the image has no curl)', () => {
    const hc = obj(postern().healthcheck, 'postern.healthcheck');
    const test = list(hc.test, 'healthcheck.test').map((t) => str(t, 'healthcheck.test item'));
    expect(['CMD', 'CMD-SHELL']).toContain(test[0]);
    expect(test[1]).toBe('node');
    const script = test.join(' ');
    expect(script).toContain(`127.0.0.1:${adminPort()}/readyz`);
    expect(script).not.toMatch(/\b(curl|wget)\b/);
    // The script itself is valid JavaScript.
    expect(() => new Function(test[test.length - 1]!)).not.toThrow();
    expect(parseDuration(str(hc.timeout, 'healthcheck.timeout')).ok).toBe(true);
  });

  it('gives postern longer than its drain timeout to stop', () => {
    const grace = parseDuration(str(postern().stop_grace_period, 'stop_grace_period'));
    expect(grace.ok && grace.value).toBeGreaterThan(config().shutdown.drainTimeout);
  });

  it('points every backend at a compose service on a network postern shares', () => {
    const networksOf = (svc: Obj) => (Array.isArray(svc.networks) ? (svc.networks as string[]) : Object.keys(obj(svc.networks ?? { default: null }, 'networks')));
    const ours = networksOf(postern());
    const backends = config().listeners.flatMap((l) => [l.backend, ...(l.routes ?? []).map((r) => r.backend)]);
    for (const b of backends) {
      const svc = obj(services()[b.address.host], `backend service "${b.address.host}"`);
      expect(networksOf(svc).some((n) => ours.includes(n)), `${b.address.host} shares a network with postern`).toBe(true);
    }
  });

  it("lets Dovecot trust PROXY headers from postern's address, inside the network's subnet", () => {
    const nets = obj(postern().networks, 'postern.networks');
    const [netName, attach] = Object.entries(nets)[0]!;
    const address = str(obj(attach, 'network attachment').ipv4_address, 'ipv4_address');
    const subnet = str(obj(list(obj(obj(obj(compose().networks, 'networks')[netName], netName).ipam, 'ipam').config, 'ipam.config')[0], 'ipam config').subnet, 'subnet');
    const parsedSubnet = parseCidr(subnet);
    expect(parsedSubnet.ok && inNetworks(address, [parsedSubnet.value])).toBe(true);

    const dovecot = obj(services().dovecot, 'dovecot');
    const conf = list(dovecot.volumes, 'dovecot.volumes').map(mount).find((m) => m.target.startsWith('/etc/dovecot/'));
    expect(conf?.readOnly).toBe(true);
    const text = readFileSync(conf!.source, 'utf8');
    const trusted = /^\s*haproxy_trusted_networks\s*=\s*(.+)$/m.exec(text)![1]!.trim().split(/\s+/).map((t) => {
      const c = parseCidr(t);
      if (!c.ok) throw new Error(c.message);
      return c.value;
    });
    expect(inNetworks(address, trusted)).toBe(true);
    // Both Dovecot listeners postern uses require the header.
    expect(text).toMatch(/inet_listener imap \{\s*haproxy = yes\s*\}/);
    expect(text).toMatch(/inet_listener pop3 \{\s*haproxy = yes\s*\}/);
  });

  it('names the files it mounts from examples/, and they exist', () => {
    for (const svc of Object.values(services())) {
      for (const v of (obj(svc, 'service').volumes as unknown[] | undefined) ?? []) {
        const m = mount(v);
        if (m.source.startsWith(EXAMPLES)) expect(existsSync(m.source), m.source).toBe(true);
      }
    }
  });

  // `docker compose config` needs a Docker engine, which these machines do not have; the
  // structural checks above stand in for it (issue 5: "else a YAML schema check").
});

// ---------------------------------------------------------------------------------------------
// examples/kubernetes/

describe('examples/kubernetes/', () => {
  const objects = lazy(() =>
    readdirSync(K8S)
      .filter((f) => /\.ya?ml$/.test(f))
      .flatMap((f) => documents(join(K8S, f)).map((d) => obj(d, f))),
  );
  const ofKind = (kind: string) => objects().filter((o) => o.kind === kind);
  const one = (kind: string) => {
    const found = ofKind(kind);
    if (found.length !== 1) throw new Error(`expected one ${kind}, found ${found.length}`);
    return found[0]!;
  };
  const nameOf = (o: Obj) => str(obj(o.metadata, 'metadata').name, 'metadata.name');

  const k = lazy(() => {
    const deployment = one('Deployment');
    const spec = obj(deployment.spec, 'Deployment spec');
    const podTemplate = obj(spec.template, 'template');
    const pod = obj(podTemplate.spec, 'pod spec');
    const container = obj(list(pod.containers, 'containers')[0], 'container');
    const containerPorts = list(container.ports, 'container ports').map((p) => obj(p, 'port'));
    const configMap = one('ConfigMap');
    const config = rawConfig(str(obj(configMap.data, 'ConfigMap data')['postern.yaml'], 'postern.yaml'));
    const volumes = list(pod.volumes, 'volumes').map((v) => obj(v, 'volume'));
    const mounts = list(container.volumeMounts, 'volumeMounts').map((m) => obj(m, 'volumeMount'));
    return { spec, podTemplate, pod, container, containerPorts, configMap, config, volumes, mounts };
  });

  /** A port reference (name or number) -> the container port number. */
  const resolvePort = (ref: unknown): number | undefined =>
    typeof ref === 'number' ? ref : (k().containerPorts.find((p) => p.name === ref)?.containerPort as number | undefined);

  it('has a Deployment, a Service, a ConfigMap and a Secret, each with apiVersion, kind and name', () => {
    for (const kind of ['Deployment', 'Service', 'ConfigMap', 'Secret']) expect(ofKind(kind).length, kind).toBeGreaterThan(0);
    for (const o of objects()) {
      expect(typeof o.apiVersion).toBe('string');
      expect(nameOf(o)).toMatch(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/);
    }
  });

  it('runs several replicas whose labels the Deployment and the Services select', () => {
    const { spec, podTemplate } = k();
    expect(spec.replicas as number).toBeGreaterThanOrEqual(2);
    const labels = obj(obj(podTemplate.metadata, 'template metadata').labels, 'template labels');
    expect(labels).toMatchObject(obj(obj(spec.selector, 'selector').matchLabels, 'matchLabels'));
    for (const svc of ofKind('Service')) expect(labels).toMatchObject(obj(obj(svc.spec, 'Service spec').selector, 'Service selector'));
  });

  it('probes readiness on /readyz of the MX listener and liveness on /healthz at the admin port', () => {
    const { container, config } = k();
    const ready = obj(obj(container.readinessProbe, 'readinessProbe').httpGet, 'readinessProbe.httpGet');
    const live = obj(obj(container.livenessProbe, 'livenessProbe').httpGet, 'livenessProbe.httpGet');
    const url = new URL(str(ready.path, 'readinessProbe.httpGet.path'), 'http://pod');
    expect(url.pathname).toBe('/readyz');
    // Issue 15: one Service carries every port, so the one readiness asks about the port-25
    // listener only; a down IMAP backend must not take the MX out of the Service.
    const mx = config.listeners.find((l) => l.listen.port === 25);
    expect(mx, 'a listener on port 25').toBeDefined();
    expect(url.searchParams.getAll('listener')).toEqual([mx!.name]);
    expect(live.path).toBe('/healthz');
    const admin = config.admin!.listen;
    expect(admin.host).not.toBe('127.0.0.1'); // the kubelet probes the pod's address
    expect(resolvePort(ready.port)).toBe(admin.port);
    expect(resolvePort(live.port)).toBe(admin.port);
  });

  it('declares a container port for every listener and publishes exactly the mail ports with client addresses kept', () => {
    const { containerPorts, config } = k();
    const numbers = containerPorts.map((p) => p.containerPort);
    for (const l of config.listeners) expect(numbers).toContain(l.listen.port);
    const lb = ofKind('Service').map((s) => obj(s.spec, 'Service spec')).find((s) => s.type === 'LoadBalancer');
    expect(lb, 'a LoadBalancer Service').toBeDefined();
    expect(lb!.externalTrafficPolicy).toBe('Local');
    const published = list(lb!.ports, 'Service ports').map((p) => obj(p, 'Service port'));
    for (const p of published) expect(resolvePort(p.targetPort ?? p.port), `Service port ${String(p.port)}`).toBe(p.port);
    expect(published.map((p) => p.port as number).sort((a, b) => a - b)).toEqual([...MAIL_PORTS].sort((a, b) => a - b));
  });

  it('reads its config from the ConfigMap folder', () => {
    const { container, configMap, volumes, mounts } = k();
    const args = list(container.args, 'args').map((a) => str(a, 'arg'));
    const path = args[args.indexOf('-c') + 1]!;
    const vol = volumes.find((v) => isObj(v.configMap) && v.configMap.name === nameOf(configMap));
    expect(vol, 'a volume of the ConfigMap').toBeDefined();
    const m = mounts.find((x) => x.name === vol!.name);
    expect(m?.subPath).toBeUndefined();
    expect(m?.readOnly).toBe(true);
    expect(path).toBe(posix.join(str(m!.mountPath, 'mountPath'), 'postern.yaml'));
  });

  it('takes its certificate from a kubernetes.io/tls Secret mounted as a folder (no subPath: the ..data swap reaches postern)', () => {
    const { config, volumes, mounts } = k();
    const secret = one('Secret');
    expect(secret.type).toBe('kubernetes.io/tls');
    const data = obj(secret.stringData ?? secret.data, 'Secret data');
    expect(Object.keys(data).sort()).toEqual(['tls.crt', 'tls.key']);
    // A placeholder, not key material.
    expect(JSON.stringify(data)).not.toMatch(/BEGIN [A-Z ]*PRIVATE KEY/);
    const vol = volumes.find((v) => isObj(v.secret) && v.secret.secretName === nameOf(secret));
    expect(vol, 'a volume of the Secret').toBeDefined();
    const m = mounts.find((x) => x.name === vol!.name);
    expect(m?.subPath).toBeUndefined();
    expect(m?.readOnly).toBe(true);
    const dir = str(m!.mountPath, 'mountPath');
    expect(config.certificates).toEqual([{ cert: `${dir}/tls.crt`, key: `${dir}/tls.key` }]);
  });

  it('mounts the Secret with a mode postern accepts without a warning (no bits for others, no group write) and a group the pod runs in', () => {
    // Kubernetes gives Secret files mode 0644 unless told otherwise; postern warns about a
    // private key that every user can read and refuses one its group or others can write.
    const { pod, volumes } = k();
    const secret = one('Secret');
    const vol = volumes.find((v) => isObj(v.secret) && v.secret.secretName === nameOf(secret))!;
    const mode = obj(vol.secret, 'secret volume').defaultMode;
    expect(typeof mode, 'secret.defaultMode').toBe('number');
    expect((mode as number) & 0o027, `defaultMode 0${(mode as number).toString(8)}`).toBe(0);
    expect((mode as number) & 0o400).toBe(0o400);
    // Readable through the group: the kubelet makes the files group fsGroup (and adds group read).
    const podSec = obj(pod.securityContext ?? {}, 'pod securityContext');
    if (((mode as number) & 0o040) !== 0) expect(podSec.fsGroup).toBeDefined();
  });

  it("runs as the image's node user (uid 1000) on a read-only root filesystem", () => {
    const { pod, container } = k();
    const podSec = obj(pod.securityContext ?? {}, 'pod securityContext');
    const sec = obj(container.securityContext, 'container securityContext');
    expect(sec.runAsNonRoot ?? podSec.runAsNonRoot).toBe(true);
    expect(sec.runAsUser ?? podSec.runAsUser).toBe(1000);
    expect(sec.readOnlyRootFilesystem).toBe(true);
    expect(sec.allowPrivilegeEscalation).toBe(false);
    expect(readFileSync(join(ROOT, 'Dockerfile'), 'utf8')).toMatch(/^USER node$/m);
  });

  it('sets resources, and a grace period longer than the drain timeout', () => {
    const { pod, container, config } = k();
    const resources = obj(container.resources, 'resources');
    expect(obj(resources.requests, 'requests')).toHaveProperty('memory');
    expect(obj(resources.limits, 'limits')).toHaveProperty('memory');
    const drainSeconds = config.shutdown.drainTimeout / 1000;
    expect(pod.terminationGracePeriodSeconds as number).toBeGreaterThan(drainSeconds);
  });

  it('names backends that parse as host:port', () => {
    const { config } = k();
    for (const l of config.listeners) expect(parseHostPort(`${l.backend.address.host}:${l.backend.address.port}`, true).ok).toBe(true);
  });
});
