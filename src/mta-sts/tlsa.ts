// DANE (RFC 7672, RFC 6698): the TLSA record "3 1 1" of a certificate's key: usage DANE-EE (3),
// selector SubjectPublicKeyInfo (1), matching type SHA-256 (1). It names the key, not the
// certificate, so it survives renewals that keep the key, and breaks on those that do not.
import { createHash, createPublicKey, X509Certificate } from 'node:crypto';

/** SHA-256 of the DER SubjectPublicKeyInfo, lowercase hex (what `openssl pkey -pubin -outform der | sha256sum` prints). */
export function spkiSha256(certPem: string): string {
  const cert = new X509Certificate(certPem);
  const der = cert.publicKey.export({ type: 'spki', format: 'der' });
  return createHash('sha256').update(der).digest('hex');
}

/** The same from a private key (the next key of a rollover has no certificate yet). */
export function spkiSha256OfKey(keyPem: string): string {
  const der = createPublicKey(keyPem).export({ type: 'spki', format: 'der' });
  return createHash('sha256').update(der).digest('hex');
}

export function tlsaRecord(host: string, sha256: string, port = 25): string {
  return `_${port}._tcp.${host}. IN TLSA 3 1 1 ${sha256}`;
}
