// RSA and ECDSA certificates for one name: a client restricted to RSA signature algorithms gets
// the RSA certificate, one restricted to ECDSA gets the ECDSA one, from the same listener.
import { describe, it, expect, onTestFinished } from 'vitest';
import tls from 'node:tls';
import { makePki } from '../helpers/certs.ts';
import { startBackend } from '../helpers/backend.ts';
import { startPostern } from '../helpers/postern.ts';
import { freePort } from '../helpers/ports.ts';

function peerKey(port: number, ca: string, sigalgs: string): Promise<{ type: string; authorized: boolean }> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ port, host: '127.0.0.1', servername: 'mail.example.org', ca, sigalgs, ALPNProtocols: ['smtp'] }, () => {
      const cert = s.getPeerX509Certificate()!;
      s.destroy();
      resolve({ type: cert.publicKey.asymmetricKeyType!, authorized: s.authorized });
    });
    s.on('error', reject);
  });
}

describe('rsa and ecdsa for one name', () => {
  it('each client gets the key type it can verify, both from the same listener', async () => {
    const pki = await makePki();
    const ec = await pki.issue('ec', { names: ['mail.example.org'] });
    const rsa = await pki.issue('rsa', { names: ['mail.example.org'], kind: 'rsa' });
    const backend = await startBackend();
    onTestFinished(() => backend.close());
    const port = await freePort();
    const p = await startPostern(pki.dir, `certificates:
  - { cert: ${ec.cert}, key: ${ec.key} }
  - { cert: ${rsa.cert}, key: ${rsa.key} }
listeners:
  - name: s
    listen: "127.0.0.1:${port}"
    protocol: smtp
    role: submission
    tls: implicit
    hostname: mail.example.org
    backend: { address: "127.0.0.1:${backend.port}", proxyProtocol: v2 }
`);
    onTestFinished(() => p.stop());
    // sigalgs limits what the server may sign the handshake with, so it must pick that key.
    expect(await peerKey(port, pki.ca.certPem, 'rsa_pss_rsae_sha256:rsa_pkcs1_sha256')).toEqual({ type: 'rsa', authorized: true });
    expect(await peerKey(port, pki.ca.certPem, 'ecdsa_secp256r1_sha256')).toEqual({ type: 'ec', authorized: true });
  });
});
