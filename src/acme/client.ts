// The CA conversation (RFC 8555), through the npm package acme-client: account, order,
// authorizations, challenge, finalize, download. acme-client does the JWS signing, nonces,
// retries on badNonce and 429/5xx (with Retry-After), External Account Binding, CSRs and the
// TLS-ALPN-01 certificate; postern adds what it lacks: ARI (RFC 9773) and the
// challenge plumbing across processes. acme-client and what it pulls in (axios, node-forge,
// @peculiar/x509 with a global Reflect polyfill) are imported only when `acme:` is configured:
// a postern without ACME never loads them.
import { generateKeyPairSync } from 'node:crypto';
import { readFileSync } from 'node:fs';
import https from 'node:https';
import tls from 'node:tls';
import { join } from 'node:path';
import type { AcmeConfig, AcmeKeyType } from '../config/types.ts';
import type { Logger } from '../log.ts';
import { accountDir, writeAtomic } from './storage.ts';
import { certIdOfPem, parseRenewalInfo } from './ari.ts';
import type { RenewalWindow } from './schedule.ts';

type AcmeLib = typeof import('acme-client');
type AcmeClient = InstanceType<AcmeLib['Client']>;

/** What the CA must find while an authorization is validated. */
export type ChallengeAnswer =
  | { type: 'tls-alpn-01'; name: string; certPem: string; keyPem: string }
  | { type: 'http-01'; name: string; token: string; keyAuthorization: string };

/** Puts an answer where the CA will look (every process that accepts connections), and takes it away. */
export interface Responder {
  publish(answer: ChallengeAnswer): Promise<void>;
  withdraw(answer: ChallengeAnswer): Promise<void>;
}

export interface Obtained {
  fullchainPem: string;
  keyPem: string;
}

/** Bytes a CA response may have: a certificate chain is a few KB. */
const MAX_RESPONSE_BYTES = 1 << 20;
const REQUEST_TIMEOUT_MS = 30_000;

/**
 * Without retries acme-client 5.4.0 still loses a network error: its response interceptor hands
 * an error that has no response (ECONNREFUSED, a timeout) to its status check, which throws
 * "Cannot read properties of undefined (reading 'config')". The log, GET /acme and the CA-wide
 * pause (caWide, which looks at the code) would never see ECONNREFUSED. Such an error goes on
 * as it is; an error with a response (4xx, 5xx, 429) still takes acme-client's way.
 */
const KEEPS = Symbol('postern keeps network errors');
function keepNetworkErrors(instance: AcmeLib['axios']) {
  type Handler = { rejected?: ((err: unknown) => unknown) | null; [KEEPS]?: true };
  (instance.interceptors.response as unknown as { forEach(fn: (h: Handler) => void): void }).forEach((h) => {
    const rejected = h.rejected;
    if (!rejected || h[KEEPS]) return;
    h[KEEPS] = true;
    h.rejected = (err: unknown) => ((err as { response?: unknown } | null)?.response === undefined ? Promise.reject(err) : rejected(err));
  });
}

let lib: Promise<AcmeLib> | null = null;
function load(): Promise<AcmeLib> {
  lib ??= import('acme-client').then((m) => ((m as { default?: AcmeLib }).default ?? m) as AcmeLib);
  return lib;
}

/** A new private key, PKCS#8 PEM: ECDSA P-256 or RSA 2048. */
export function newKey(type: AcmeKeyType): string {
  const { privateKey } =
    type === 'rsa'
      ? generateKeyPairSync('rsa', { modulusLength: 2048, privateKeyEncoding: { type: 'pkcs8', format: 'pem' }, publicKeyEncoding: { type: 'spki', format: 'pem' } })
      : generateKeyPairSync('ec', { namedCurve: 'prime256v1', privateKeyEncoding: { type: 'pkcs8', format: 'pem' }, publicKeyEncoding: { type: 'spki', format: 'pem' } });
  return privateKey;
}

export class AcmeAccount {
  private readonly acme: AcmeLib;
  private readonly client: AcmeClient;
  private readonly config: AcmeConfig;
  private readonly log: Logger;
  /** RFC 9773: the directory's renewalInfo URL, when the CA has ARI. */
  readonly renewalInfo: string | null;

  private constructor(acme: AcmeLib, client: AcmeClient, config: AcmeConfig, log: Logger, renewalInfo: string | null) {
    this.acme = acme;
    this.client = client;
    this.config = config;
    this.log = log;
    this.renewalInfo = renewalInfo;
  }

  /**
   * The account key is kept in the storage (0600) and reused: a new key would be a new account
   * at every start. The account is registered (or found: RFC 8555 section 7.3.1 returns the
   * existing one for a known key) with the contact address and the agreed terms.
   */
  static async open(config: AcmeConfig, log: Logger): Promise<AcmeAccount> {
    const acme = await load();
    const roots = config.caCertificates ? [...tls.rootCertificates, readFileSync(config.caCertificates, 'utf8')] : undefined;
    acme.axios.defaults.httpsAgent = new https.Agent({ keepAlive: true, ...(roots ? { ca: roots } : {}) });
    acme.axios.defaults.timeout = REQUEST_TIMEOUT_MS;
    acme.axios.defaults.maxContentLength = MAX_RESPONSE_BYTES;
    acme.axios.defaults.maxRedirects = 0;
    // acme-client retries a CA that does not answer 5 times over 75 s and then throws a TypeError
    // instead of the network error (5.4.0). postern's own backoff (acme.retry) is the retry: one
    // request, its real error, and the next attempt minutes later.
    (acme.axios.defaults as unknown as { acmeSettings: { retryMaxAttempts: number } }).acmeSettings.retryMaxAttempts = 0;
    keepNetworkErrors(acme.axios);
    acme.setLogger((message: string) => log.trace({ acme: message }, 'acme-client'));

    const dir = accountDir(config.storage, config.directory);
    const keyFile = join(dir, 'key.pem');
    let accountKey: string;
    try {
      accountKey = readFileSync(keyFile, 'utf8');
    } catch {
      accountKey = newKey('ecdsa');
      writeAtomic(keyFile, accountKey, 0o600);
      log.info({ file: keyFile, directory: config.directory }, 'acme: new account key');
    }
    const eab = config.externalAccountBinding;
    // Polling an authorization or order: from 0.5 s, doubling to 10 s, 12 times (~1.5 minutes).
    const client = new acme.Client({
      directoryUrl: config.directory,
      accountKey,
      backoffMin: 500,
      backoffMax: 10_000,
      backoffAttempts: 12,
      ...(eab ? { externalAccountBinding: { kid: eab.kid, hmacKey: eab.hmacKey } } : {}),
    });
    await client.createAccount({ termsOfServiceAgreed: true, contact: [`mailto:${config.email}`] });
    writeAtomic(join(dir, 'account.json'), `${JSON.stringify({ directory: config.directory, url: client.getAccountUrl(), contact: config.email }, null, 2)}\n`, 0o600);
    const directory = (await acme.axios.get(config.directory)).data as { renewalInfo?: unknown };
    const renewalInfo = typeof directory.renewalInfo === 'string' ? directory.renewalInfo : null;
    return new AcmeAccount(acme, client, config, log, renewalInfo);
  }

  /** RFC 9773 section 4.2: the CA's window for renewing `certPem`; null without ARI or on any error. */
  async renewalWindow(certPem: string): Promise<RenewalWindow | null> {
    if (!this.renewalInfo) return null;
    const id = certIdOfPem(certPem);
    if (!id) return null;
    try {
      const r = await this.acme.axios.get(`${this.renewalInfo.replace(/\/$/, '')}/${id}`, { maxContentLength: 64 * 1024 });
      return parseRenewalInfo(r.data);
    } catch (err) {
      this.log.warn({ error: (err as Error).message }, 'acme: renewal information (ARI) not available; renewing at two thirds of the lifetime');
      return null;
    }
  }

  /**
   * One certificate for `name` with a new key of `keyType` (or `reuseKey`). `replacing`: the certificate this one
   * renews (RFC 9773 section 5: tells an ARI CA, which exempts such renewals from rate limits).
   */
  async order(name: string, keyType: AcmeKeyType, responder: Responder, replacing: string | null, reuseKey: string | null = null): Promise<Obtained> {
    const { acme, client } = this;
    const replaces = replacing && this.renewalInfo ? certIdOfPem(replacing) : null;
    const order = await client.createOrder({ identifiers: [{ type: 'dns', value: name }], ...(replaces ? { replaces } : {}) } as Parameters<AcmeClient['createOrder']>[0]);
    const authorizations = await client.getAuthorizations(order);
    for (const authz of authorizations) {
      if (authz.status === 'valid') continue; // reused from an earlier order (RFC 8555 section 7.1.4)
      // acme-client's types know only http-01 and dns-01; the CA's list is whatever it offers.
      const challenge = authz.challenges.find((c) => (c.type as string) === this.config.challenge);
      if (!challenge) {
        const offered = authz.challenges.map((c) => c.type).join(', ');
        throw new Error(`the CA offers no ${this.config.challenge} challenge for ${authz.identifier.value} (offered: ${offered}); set acme.challenge to one of those`);
      }
      const keyAuthorization = await client.getChallengeKeyAuthorization(challenge);
      let answer: ChallengeAnswer;
      if (this.config.challenge === 'tls-alpn-01') {
        const [key, cert] = await acme.crypto.createAlpnCertificate(authz, keyAuthorization, newKey('ecdsa'));
        answer = { type: 'tls-alpn-01', name: authz.identifier.value, certPem: cert.toString(), keyPem: key.toString() };
      } else {
        answer = { type: 'http-01', name: authz.identifier.value, token: (challenge as { token: string }).token, keyAuthorization };
      }
      await responder.publish(answer);
      try {
        await client.completeChallenge(challenge);
        await client.waitForValidStatus(challenge);
      } finally {
        await responder.withdraw(answer);
      }
    }
    // A kept key (DANE: the published TLSA record names it) or a new one.
    const keyPem = reuseKey ?? newKey(keyType);
    const [, csr] = await acme.crypto.createCsr({ commonName: name, altNames: [name] }, keyPem);
    const finalized = await client.finalizeOrder(order, csr);
    const fullchainPem = await client.getCertificate(finalized);
    return { fullchainPem, keyPem };
  }
}
