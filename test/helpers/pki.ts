// Throwaway certificate authorities and certificates, made in memory, for the tests, the soak and
// the benchmarks (generated per run, never committed with an expiry date). `postern demo` makes
// its CA with the openssl command instead (src/demo/ca.ts), so @peculiar/x509 is a dev dependency.
// @peculiar/x509 resolves its algorithm providers through tsyringe, which needs this polyfill.
import 'reflect-metadata';
import { webcrypto } from 'node:crypto';
import * as x509 from '@peculiar/x509';

x509.cryptoProvider.set(webcrypto as unknown as Crypto);

export type KeyKind = 'ecdsa' | 'rsa';

export interface Issued {
  certPem: string;
  keyPem: string;
  /** Leaf followed by the issuing CA: what a server sends. */
  chainPem: string;
}

export interface TestCa {
  certPem: string;
  keys: CryptoKeyPair;
  cert: x509.X509Certificate;
}

const DAY = 86_400_000;

function algorithm(kind: KeyKind) {
  return kind === 'ecdsa'
    ? { gen: { name: 'ECDSA', namedCurve: 'P-256' } as EcKeyGenParams, sign: { name: 'ECDSA', hash: 'SHA-256' } as EcdsaParams }
    : { gen: { name: 'RSASSA-PKCS1-v1_5', modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]), hash: 'SHA-256' } as RsaHashedKeyGenParams, sign: { name: 'RSASSA-PKCS1-v1_5' } as Algorithm };
}

async function keyPem(key: CryptoKey): Promise<string> {
  const der = await webcrypto.subtle.exportKey('pkcs8', key as webcrypto.CryptoKey);
  return x509.PemConverter.encode(der, 'PRIVATE KEY');
}

export async function createCa(commonName = 'postern test CA', kind: KeyKind = 'ecdsa'): Promise<TestCa> {
  const alg = algorithm(kind);
  const keys = (await webcrypto.subtle.generateKey(alg.gen, true, ['sign', 'verify'])) as CryptoKeyPair;
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    name: `CN=${commonName}`,
    keys,
    signingAlgorithm: alg.sign,
    notBefore: new Date(Date.now() - DAY),
    notAfter: new Date(Date.now() + 3650 * DAY),
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { certPem: cert.toString('pem'), keys, cert };
}

export interface IssueOptions {
  names: string[];
  kind?: KeyKind;
  notBefore?: Date;
  notAfter?: Date;
}

export async function issueCert(ca: TestCa, opts: IssueOptions): Promise<Issued> {
  const alg = algorithm(opts.kind ?? 'ecdsa');
  const keys = (await webcrypto.subtle.generateKey(alg.gen, true, ['sign', 'verify'])) as CryptoKeyPair;
  const caAlg = ca.keys.privateKey.algorithm.name === 'ECDSA' ? algorithm('ecdsa') : algorithm('rsa');
  const cert = await x509.X509CertificateGenerator.create({
    subject: `CN=${opts.names[0] ?? 'postern'}`,
    issuer: ca.cert.subject,
    publicKey: keys.publicKey,
    signingKey: ca.keys.privateKey,
    signingAlgorithm: caAlg.sign,
    notBefore: opts.notBefore ?? new Date(Date.now() - DAY),
    notAfter: opts.notAfter ?? new Date(Date.now() + 90 * DAY),
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
      new x509.SubjectAlternativeNameExtension(opts.names.map((n) => ({ type: 'dns' as const, value: n }))),
      await x509.AuthorityKeyIdentifierExtension.create(ca.keys.publicKey),
    ],
  });
  const certPem = cert.toString('pem');
  return { certPem, keyPem: await keyPem(keys.privateKey), chainPem: `${certPem}\n${ca.certPem}\n` };
}
