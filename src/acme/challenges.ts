// The answers to the CA's validation requests while an order is open, looked up by the listeners
// (TLS-ALPN-01) and the HTTP-01 listener. Only names the manager ordered are ever here, and only
// until their order is decided: an SNI a client sends never adds anything.
import tls, { type SecureContext } from 'node:tls';
import { SERVER_TLS_OPTIONS } from '../tls/settings.ts';

/** RFC 8737 section 6.2: the ALPN protocol of the TLS-ALPN-01 validation. */
export const ACME_TLS_ALPN = 'acme-tls/1';

export interface TlsAlpnAnswer {
  certPem: string;
  keyPem: string;
}

export class ChallengeBoard {
  private readonly alpn = new Map<string, SecureContext>();
  private readonly http = new Map<string, string>();

  /** RFC 8737 section 3: the self-signed certificate carrying the acmeIdentifier extension. */
  setTlsAlpn(name: string, answer: TlsAlpnAnswer) {
    // TLS 1.2 as the floor: the CA's validator is the client here, not a mail client.
    const context = tls.createSecureContext({ ...SERVER_TLS_OPTIONS, cert: answer.certPem, key: answer.keyPem, minVersion: 'TLSv1.2' });
    this.alpn.set(name, context);
  }

  removeTlsAlpn(name: string) {
    this.alpn.delete(name);
  }

  tlsAlpn(name: string): SecureContext | null {
    return this.alpn.get(name) ?? null;
  }

  /** RFC 8555 section 8.3: the token's key authorization, served at /.well-known/acme-challenge/<token>. */
  setHttp(token: string, keyAuthorization: string) {
    this.http.set(token, keyAuthorization);
  }

  removeHttp(token: string) {
    this.http.delete(token);
  }

  httpAnswer(token: string): string | null {
    return this.http.get(token) ?? null;
  }

  get pending(): number {
    return this.alpn.size + this.http.size;
  }
}
