import { describe, it, expect, beforeAll } from 'vitest';
import { decide } from '../../src/tls/sni-policy.ts';
import { buildCertStore, type CertStore } from '../../src/tls/certstore.ts';
import type { ListenerConfig } from '../../src/config/types.ts';
import { makePki } from '../helpers/certs.ts';

let store: CertStore;

function listener(over: Partial<ListenerConfig> = {}): ListenerConfig {
  return {
    name: 't', listen: { host: '127.0.0.1', port: 1 }, protocol: 'smtp', tls: 'implicit', role: 'submission', hostname: 'mail.example.org', sni: 'strict',
    serverNames: null, alpn: ['smtp'], minVersion: 'TLSv1.2', backend: { address: { host: '127.0.0.1', port: 2 }, proxyProtocol: 'v2' },
    timeouts: { handshakeMs: 1000, connectMs: 1000, idleMs: 1000, starttlsMs: 1000, backendReplyMs: 1000 }, starttls: null, limits: { maxConnections: 10, maxConnectionsPerClient: 10 }, routes: [], acceptProxyProtocol: null, dane: false, path: 'listeners[0]', ...over,
  };
}
const sni = (s: string | null) => ({ serverName: s === null ? null : Buffer.from(s, 'latin1'), alpn: null });

beforeAll(async () => {
  const pki = await makePki();
  const mail = await pki.issue('mail', { names: ['mail.example.org'] });
  const wild = await pki.issue('wild', { names: ['*.example.org'] });
  const com = await pki.issue('com', { names: ['*.example.com'] });
  const built = buildCertStore([
    { ...wild, path: 'certificates[0]' },
    { ...mail, path: 'certificates[1]' },
    { ...com, path: 'certificates[2]' },
  ]);
  expect(built.problems.filter((p) => p.severity === 'error')).toEqual([]);
  store = built.store!;
});

describe('sni policy', () => {
  for (const policy of ['strict', 'fallback'] as const) {
    it(`${policy}: no sni serves the listener hostname certificate`, () => {
      const r = decide(listener({ sni: policy }), sni(null), store);
      expect(r).toMatchObject({ action: 'serve', sniClass: 'none', decision: 'served', servedName: 'mail.example.org' });
      expect(r.action === 'serve' && r.unit.primary.names).toEqual(['mail.example.org']);
    });
    it(`${policy}: an exact name beats a wildcard that also covers it`, () => {
      const r = decide(listener({ sni: policy }), sni('MAIL.Example.ORG'), store);
      expect(r).toMatchObject({ action: 'serve', sniClass: 'exact', decision: 'served', sni: 'mail.example.org' });
      expect(r.action === 'serve' && r.unit.primary.names).toEqual(['mail.example.org']);
    });
    it(`${policy}: a wildcard covers one leftmost label`, () => {
      const r = decide(listener({ sni: policy }), sni('imap.example.org'), store);
      expect(r).toMatchObject({ action: 'serve', sniClass: 'wildcard', decision: 'served', servedName: 'imap.example.org' });
    });
    it(`${policy}: illegible bytes are refused with alert 112`, () => {
      expect(decide(listener({ sni: policy }), sni('mail\0.example.org'), store)).toMatchObject({ action: 'refuse', alert: 112, sniClass: 'invalid', detail: 'illegible' });
    });
    it(`${policy}: alpn offered without a common protocol is refused with alert 120 before the sni`, () => {
      expect(decide(listener({ sni: policy }), { serverName: Buffer.from('nowhere.example.net'), alpn: ['h2', 'http/1.1'] }, store)).toMatchObject({ action: 'refuse', alert: 120, reason: 'alpn_refused' });
    });
  }

  it('strict: an unknown name is refused with alert 112', () => {
    expect(decide(listener(), sni('a.b.example.org'), store)).toMatchObject({ action: 'refuse', alert: 112, sniClass: 'unknown', detail: 'unknown' });
  });
  it('fallback: an unknown name gets the listener certificate and the reason', () => {
    expect(decide(listener({ sni: 'fallback' }), sni('example.org'), store)).toMatchObject({ action: 'serve', sniClass: 'unknown', decision: 'fallback', servedName: 'mail.example.org', reason: 'unknown' });
  });
  for (const [name, reason] of [['192.0.2.1', 'ip_literal'], ['localhost', 'no_dot'], ['mail.example.org.', 'trailing_dot'], ['my_host.example.org', 'bad_chars'], ['[::1]', 'ip_literal']] as const) {
    it(`strict refuses ${reason} sni "${name}" and fallback serves the listener certificate`, () => {
      expect(decide(listener(), sni(name), store)).toMatchObject({ action: 'refuse', alert: 112, sniClass: 'invalid', detail: reason });
      expect(decide(listener({ sni: 'fallback' }), sni(name), store)).toMatchObject({ action: 'serve', sniClass: 'invalid', decision: 'fallback', reason, servedName: 'mail.example.org' });
    });
  }
  it('serverNames excludes a name a loaded certificate covers', () => {
    const l = listener({ serverNames: ['mail.example.org', '*.example.org'] });
    expect(decide(l, sni('www.example.com'), store)).toMatchObject({ action: 'refuse', sniClass: 'unknown', detail: 'not_allowed' });
    expect(decide(l, sni('pop.example.org'), store)).toMatchObject({ action: 'serve', sniClass: 'wildcard' });
  });
  it('the first of the listener alpn protocols that the client offers is selected', () => {
    const l = listener({ protocol: 'tls', alpn: ['h2', 'http/1.1'] });
    expect(decide(l, { serverName: null, alpn: ['http/1.1', 'h2'] }, store)).toMatchObject({ action: 'serve', alpn: 'h2' });
  });
  it('a client that offers no alpn is accepted and nothing is selected', () => {
    expect(decide(listener(), { serverName: null, alpn: null }, store)).toMatchObject({ action: 'serve', alpn: null });
  });
  it('alpn handling off accepts any offer and selects nothing', () => {
    expect(decide(listener({ alpn: null }), { serverName: null, alpn: ['h2'] }, store)).toMatchObject({ action: 'serve', alpn: null });
  });
});
