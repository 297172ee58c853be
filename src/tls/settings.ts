// The TLS policy every listener serves with: which suites, whose order, and no client-initiated
// renegotiation. A fixed policy, not a setting: the list below is what RFC 9325 recommends, and
// every mainstream mail client and MTA of the last decade supports it. ServeUnit.context()
// (certstore.ts) passes these options to every SecureContext it creates.
import { constants } from 'node:crypto';
import type { SecureContextOptions } from 'node:tls';

/**
 * TLS 1.2: ECDHE key exchange (forward secrecy) with an AEAD cipher only, for ECDSA and RSA
 * certificates alike. RFC 9325 section 4.1: implementations SHOULD NOT negotiate static-RSA key
 * transport and MUST prefer forward-secret suites; section 4.2 recommends exactly the ECDHE
 * AES-GCM suites, and RFC 7905's CHACHA20-POLY1305 is the AEAD for clients without AES hardware.
 * The list and order are Mozilla's "intermediate" configuration (v5.7) without its DHE suites:
 * Node offers DHE only with DH parameters, which postern does not configure, a client with AES-GCM
 * but no ECDHE is rare, and finite-field DHE costs the server far more per handshake. The ECDSA
 * variant comes first in each pair so that a dual ECDSA+RSA context serves the ECDSA certificate
 * to clients that can verify it.
 * Left out on purpose: static RSA (AES128-GCM-SHA256, AES256-SHA: no forward secrecy), CBC modes
 * (Lucky Thirteen, RFC 9325 section 4.2's preference for AEAD), SHA-1 MACs, 3DES, RC4.
 */
export const TLS12_SUITES = [
  'ECDHE-ECDSA-AES128-GCM-SHA256',
  'ECDHE-RSA-AES128-GCM-SHA256',
  'ECDHE-ECDSA-AES256-GCM-SHA384',
  'ECDHE-RSA-AES256-GCM-SHA384',
  'ECDHE-ECDSA-CHACHA20-POLY1305',
  'ECDHE-RSA-CHACHA20-POLY1305',
] as const;

/**
 * TLS 1.3: OpenSSL's default suites in its default order, unchanged (every TLS 1.3 suite is
 * forward-secret AEAD by construction, RFC 8446 section 9.1). Node splits `ciphers` by name:
 * `TLS_*` entries go to SSL_CTX_set_ciphersuites (TLS 1.3), the rest to SSL_CTX_set_cipher_list
 * (TLS 1.2). Without a `TLS_*` entry Node 24 would keep OpenSSL's TLS 1.3 defaults, and without
 * a TLS 1.2 entry it would raise the minimum version to TLS 1.3; both lists are stated here so
 * that what is served is in one place, not in OpenSSL's build defaults.
 */
export const TLS13_SUITES = ['TLS_AES_256_GCM_SHA384', 'TLS_CHACHA20_POLY1305_SHA256', 'TLS_AES_128_GCM_SHA256'] as const;

/**
 * The options every server SecureContext gets, next to its certificates and minVersion.
 * - honorCipherOrder (SSL_OP_CIPHER_SERVER_PREFERENCE): the server's order above decides, not
 *   the client's. RFC 9325 section 4.2.1: servers MUST prefer TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
 *   over weaker suites whenever it is proposed, even if not first. (Mozilla leaves the choice to
 *   the client, every suite on its list being strong; HAProxy prefers the server's order by
 *   default, and testssl.sh rates a client-chosen order HIGH.) Node's tls.Server turns this on
 *   by default, but tls.createSecureContext() does not: a context handed to `new TLSSocket()`
 *   followed the client's order until this was set.
 * - SSL_OP_NO_RENEGOTIATION: a TLS 1.2 ClientHello inside an established session is answered with
 *   a no_renegotiation alert (RFC 5246 section 7.2.2) instead of a new handshake. Each renegotiation
 *   costs the server a full handshake's public-key work for the price of a few client bytes
 *   (THC-SSL-DOS, 2011), and renegotiation has no use on a mail port (it is gone from TLS 1.3,
 *   RFC 8446 section 4.1.2). Node's own limit (tls.CLIENT_RENEG_LIMIT, 3 in 10 minutes) did not
 *   stop a Node 24 client's renegotiate() from succeeding 5 times in a row on a TLSSocket with a
 *   context of its own, nor raise an error; OpenSSL's option does. testssl.sh: secure_client_renego
 *   MEDIUM before.
 */
export const SERVER_TLS_OPTIONS: Readonly<Pick<SecureContextOptions, 'ciphers' | 'honorCipherOrder' | 'secureOptions'>> = Object.freeze({
  ciphers: [...TLS13_SUITES, ...TLS12_SUITES].join(':'),
  honorCipherOrder: true,
  secureOptions: constants.SSL_OP_NO_RENEGOTIATION,
});
