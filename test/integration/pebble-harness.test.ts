// The pebble helper proven with a real ACME client: acme-client obtains a certificate over
// HTTP-01 answered by this test, the chain verifies against pebble's root with node:crypto and a
// TLS handshake, the validity period is the configured one, and a CA outage and return work.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as acme from 'acme-client';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import { freePorts } from '../helpers/ports.ts';
import { startPebble, type Pebble } from '../helpers/pebble.ts';

const NAME = 'mail.example.test';
const VALIDITY = 60;
const EAB = { 'kid-1': 'zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W' };

const pems = (s: string) => s.match(/-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/g)?.map((p) => new X509Certificate(p)) ?? [];

let dir: string;
let httpPort: number;
let pebble: Pebble;
let challengeServer: http.Server;
/** token -> key authorization, what the HTTP-01 responder serves. */
const tokens = new Map<string, string>();
/** Host headers of the validation requests pebble's VA made. */
const validationHosts: string[] = [];
let issued: { key: string; chain: string };

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'postern-pebble-'));
  let tlsPort: number;
  [httpPort, tlsPort] = (await freePorts(2)) as [number, number];
  challengeServer = http.createServer((req, res) => {
    validationHosts.push(req.headers.host ?? '');
    const answer = tokens.get(/^\/\.well-known\/acme-challenge\/([\w-]+)$/.exec(req.url ?? '')?.[1] ?? '');
    res.writeHead(answer ? 200 : 404, { 'content-type': 'text/plain' }).end(answer ?? '');
  });
  await new Promise<void>((r) => challengeServer.listen(httpPort, '127.0.0.1', r));
  pebble = await startPebble({ dir, httpPort, tlsPort, validitySeconds: VALIDITY });
  // acme-client's own axios instance: trust pebble's HTTPS CA there and nowhere else.
  acme.axios.defaults.httpsAgent = new https.Agent({ ca: pebble.caCertPem });
  // A refused connection would otherwise be retried 5 times, 5 s apart and growing (75 s in all).
  (acme.axios.defaults as unknown as { acmeSettings: { retryMaxAttempts: number } }).acmeSettings.retryMaxAttempts = 0;
});

afterAll(async () => {
  await pebble?.stop();
  await new Promise((r) => challengeServer?.close(r));
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const newClient = async () =>
  new acme.Client({
    directoryUrl: pebble.directoryUrl,
    accountKey: await acme.crypto.createPrivateEcdsaKey(),
    // Order and challenge polls start at 5 s otherwise; pebble is done in milliseconds.
    backoffMin: 50,
    backoffMax: 500,
  });

async function obtain(client: acme.Client) {
  const [key, csr] = await acme.crypto.createCsr({ commonName: NAME }, await acme.crypto.createPrivateEcdsaKey());
  const chain = await client.auto({
    csr,
    termsOfServiceAgreed: true,
    challengePriority: ['http-01'],
    // acme-client would first fetch http://<name>:80/ itself, through the system resolver.
    skipChallengeVerification: true,
    challengeCreateFn: async (_authz, challenge, keyAuthorization) => void tokens.set(challenge.token, keyAuthorization),
    challengeRemoveFn: async (_authz, challenge) => void tokens.delete(challenge.token),
  });
  return { key: key.toString(), chain };
}

describe('pebble harness', () => {
  it('issues a certificate over HTTP-01 that verifies against issuerRoots()', async () => {
    const client = await newClient();
    issued = await obtain(client);

    const [leaf, intermediate, ...rest] = pems(issued.chain);
    const roots = pems(await pebble.issuerRoots());
    expect(rest).toEqual([]);
    expect(roots).toHaveLength(1);
    const root = roots[0]!;
    expect(leaf!.subjectAltName).toBe(`DNS:${NAME}`);
    expect(leaf!.checkIssued(intermediate!)).toBe(true);
    expect(leaf!.verify(intermediate!.publicKey)).toBe(true);
    expect(intermediate!.checkIssued(root)).toBe(true);
    expect(intermediate!.verify(root.publicKey)).toBe(true);
    // pebble sets notAfter = notBefore + period - 1 s: RFC 5280 counts both ends, so the period exactly.
    expect((leaf!.validToDate.getTime() - leaf!.validFromDate.getTime()) / 1000).toBe(VALIDITY - 1);
    expect(Math.abs(leaf!.validFromDate.getTime() - Date.now())).toBeLessThan(30_000);

    // The VA asked this test's responder, by name, on httpPort (3 concurrent requests in 2.4.0).
    expect(validationHosts.length).toBeGreaterThan(0);
    expect(new Set(validationHosts)).toEqual(new Set([`${NAME}:${httpPort}`]));
    expect(await pebble.orders()).toBe(1);
    expect(await pebble.issued()).toBe(1);
    expect(await pebble.validations()).toEqual({ valid: 1, invalid: 0 });
  });

  it('serves a chain a TLS client verifies with only issuerRoots() as its CA', async () => {
    const server = tls.createServer({ key: issued.key, cert: issued.chain });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    try {
      const ca = await pebble.issuerRoots();
      const authorized = await new Promise<boolean>((resolve, reject) => {
        const s = tls.connect({ host: '127.0.0.1', port: (server.address() as { port: number }).port, servername: NAME, ca }, () => {
          resolve(s.authorized);
          s.end();
        });
        s.on('error', reject);
      });
      expect(authorized).toBe(true);
    } finally {
      await new Promise((r) => server.close(r));
    }
  });

  it('survives a CA outage: refused while stopped, back on the same URL with a new root and no accounts', async () => {
    const client = await newClient();
    await client.createAccount({ termsOfServiceAgreed: true });

    await pebble.stopCa();
    // acme-client 5.4.0 loses the refused connection's error once its retries are spent: it throws
    // "Cannot read properties of undefined (reading 'config')". Any rejection is the outage.
    await expect(client.createOrder({ identifiers: [{ type: 'dns', value: NAME }] })).rejects.toThrow();
    await expect(fetch(pebble.directoryUrl)).rejects.toThrow();

    await pebble.startCa();
    // Everything is in memory: the account made before the outage is gone.
    await expect(client.createOrder({ identifiers: [{ type: 'dns', value: NAME }] })).rejects.toThrow(/account/i);
    const roots = pems(await pebble.issuerRoots());
    expect(roots).toHaveLength(2);
    expect(roots[0]!.fingerprint256).not.toBe(roots[1]!.fingerprint256);

    // A fresh account gets a certificate from the new root; the old leaf still verifies against the list.
    const again = await obtain(await newClient());
    const [leaf, intermediate] = pems(again.chain);
    expect(intermediate!.verify(roots[1]!.publicKey)).toBe(true);
    expect(leaf!.checkIssued(intermediate!)).toBe(true);
    expect(await pebble.orders()).toBe(2);
    expect(await pebble.issued()).toBe(2);
  });
});

describe('pebble harness with external account binding', () => {
  let eabPebble: Pebble;
  let eabDir: string;

  beforeAll(async () => {
    eabDir = mkdtempSync(join(tmpdir(), 'postern-pebble-eab-'));
    const [httpPort, tlsPort] = (await freePorts(2)) as [number, number];
    // Nothing listens on httpPort: alwaysValid skips the VA's connection.
    eabPebble = await startPebble({ dir: eabDir, httpPort, tlsPort, eab: EAB, alwaysValid: true });
    acme.axios.defaults.httpsAgent = new https.Agent({ ca: [pebble.caCertPem, eabPebble.caCertPem] });
  });

  afterAll(async () => {
    await eabPebble?.stop();
    if (eabDir) rmSync(eabDir, { recursive: true, force: true });
  });

  it('refuses an account without a binding and accepts one with the configured kid and key', async () => {
    const client = async (eab?: { kid: string; hmacKey: string }) =>
      new acme.Client({ directoryUrl: eabPebble.directoryUrl, accountKey: await acme.crypto.createPrivateEcdsaKey(), ...(eab && { externalAccountBinding: eab }) });
    await expect((await client()).createAccount({ termsOfServiceAgreed: true })).rejects.toThrow(/include a value for the 'externalAccountBinding' field/);
    const account = await (await client({ kid: 'kid-1', hmacKey: EAB['kid-1'] })).createAccount({ termsOfServiceAgreed: true });
    expect(account.status).toBe('valid');
    expect(await eabPebble.count(/Successful newAccount Binding with CA using kid "kid-1"/)).toBe(1);
  });
});
