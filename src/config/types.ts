// The compiled runtime configuration. Nothing downstream of src/config/load.ts reads raw YAML:
// addresses are parsed, durations are milliseconds, names are lowercased, paths are absolute.

export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace';
export type LogFormat = 'json' | 'text';
export type Protocol = 'smtp' | 'imap' | 'pop3' | 'tls';
export type TlsMode = 'implicit' | 'starttls';
export type SniPolicyName = 'strict' | 'fallback';
/** What an SMTP listener is for: mail from other servers (mx) or from your users (submission). */
export type SmtpRole = 'mx' | 'submission';
export type ProxyProtocolVersion = 'none' | 'v1' | 'v2';
export type TlsMinVersion = 'TLSv1.2' | 'TLSv1.3';

export interface HostPort {
  /** IPv4 dotted quad, IPv6 without brackets, or a host name (backends only). */
  host: string;
  port: number;
}

export interface CertificateSource {
  /** Absolute path of the PEM certificate (leaf first, then the chain). */
  cert: string;
  /** Absolute path of the PEM private key. */
  key: string;
  /** YAML path of this entry, e.g. "certificates[0]", for error messages. */
  path: string;
}

/** A certbot `live/` folder: each subfolder with fullchain.pem + privkey.pem is one pair. */
export interface CertificateDir {
  dir: string;
  path: string;
  /**
   * ACME storage: the folder may be missing or empty (nothing issued yet) without an error.
   * Never set by a certificates[] entry, where an empty folder is a mistake.
   */
  optional?: boolean;
}

/** One PEM file with the private key, the certificate and its chain (HAProxy/hitch style). */
export interface CertificatePem {
  pem: string;
  path: string;
}

export type CertificateSpec = CertificateSource | CertificateDir | CertificatePem;

export interface BackendConfig {
  address: HostPort;
  proxyProtocol: ProxyProtocolVersion;
}

export interface LimitsConfig {
  /** Open connections on the listener; the next one gets SMTP 421 4.7.0 or a close. */
  maxConnections: number;
  /** Open connections from one client address (IPv6 counted per /64). */
  maxConnectionsPerClient: number;
}

export interface RouteConfig {
  /** Lowercased exact names or "*.domain" patterns matched against the SNI. */
  serverNames: string[];
  backend: BackendConfig;
  /** YAML path, e.g. "listeners[0].routes[1]". */
  path: string;
}

/** An IPv4 or IPv6 network in CIDR form, parsed. */
export interface Cidr {
  text: string;
  family: 4 | 6;
  /** Network address bytes (4 or 16). */
  bytes: Buffer;
  prefix: number;
}

export interface TimeoutsConfig {
  /**
   * Absolute deadline for the TLS handshake (covers the ClientHello peek): from accept for
   * implicit TLS, from the STARTTLS command for STARTTLS listeners.
   */
  handshakeMs: number;
  /** Deadline for the backend TCP connect. */
  connectMs: number;
  /** A connection with no bytes either way for this long is closed. */
  idleMs: number;
  /** STARTTLS listeners: absolute deadline from accept to the STARTTLS command (or handoff). */
  starttlsMs: number;
  /**
   * STARTTLS and handoff sessions: the longest the after-TLS filter waits for a backend reply
   * while it holds the client's bytes (greeting, 354, "+", pipelined replies). RFC 5321 section
   * 4.5.3.2.2 gives a client 2 minutes for the reply to DATA.
   */
  backendReplyMs: number;
}

export interface StarttlsConfig {
  /** Text after the status in the greeting postern sends itself (SMTP `220 <greeting>`). */
  greeting: string;
  /** Refuse commands that need TLS (AUTH, MAIL, LOGIN, USER...) before STARTTLS. */
  requireTls: boolean;
  /** How often the backend's capabilities are probed again. */
  probeIntervalMs: number;
  /** Capabilities announced when the probe fails (EHLO keywords / IMAP capabilities / POP3 CAPA lines). */
  fallbackCapabilities: string[];
}

export interface ListenerConfig {
  name: string;
  listen: HostPort;
  protocol: Protocol;
  tls: TlsMode;
  /**
   * protocol smtp: `mx` or `submission` (the sni and requireTls defaults follow it); null for
   * imap, pop3 and tls, which serve only your own users.
   */
  role: SmtpRole | null;
  /** This listener's own name, lowercased, A-label form. */
  hostname: string;
  sni: SniPolicyName;
  /** Lowercased exact names or "*.domain" patterns; null means any loaded certificate. */
  serverNames: string[] | null;
  /** Acceptable ALPN protocols in preference order; null means no ALPN handling. */
  alpn: string[] | null;
  minVersion: TlsMinVersion;
  backend: BackendConfig;
  timeouts: TimeoutsConfig;
  limits: LimitsConfig;
  /** SNI-based backend choice: first match wins, `backend` otherwise. */
  routes: RouteConfig[];
  /** Networks allowed (and required) to send a PROXY header to this listener; null: none. */
  acceptProxyProtocol: { from: Cidr[] } | null;
  /** Only for tls: starttls; null for implicit TLS listeners. */
  starttls: StarttlsConfig | null;
  /**
   * role: mx only: TLSA records (RFC 7672) are published for this hostname. A certificate change
   * that changes the key is then an alarm, and ACME keeps the key across renewals.
   */
  dane: boolean;
  /** YAML path, e.g. "listeners[1]". */
  path: string;
}

export type AcmeKeyType = 'ecdsa' | 'rsa';
export type AcmeChallengeType = 'tls-alpn-01' | 'http-01';

/** Built-in ACME (RFC 8555): certificates ordered for configured names only, never for an SNI. */
export interface AcmeConfig {
  /** The CA's directory URL. */
  directory: string;
  /** Contact address given to the CA (expiry and policy mail). */
  email: string;
  /** Absolute path; certificates go to <storage>/live/<name>/ (certbot layout). */
  storage: string;
  /**
   * Every name postern obtains a certificate for: `hosts`, plus each listener's hostname unless
   * `listenerHostnames: false`; lowercased, deduplicated, in file order.
   */
  names: string[];
  /** Each name gets one certificate per key type (both served from one name, like certificates[]). */
  keyTypes: AcmeKeyType[];
  challenge: AcmeChallengeType;
  /** The plain HTTP listener for HTTP-01 (only /.well-known/acme-challenge/); null: none. */
  http: { listen: HostPort } | null;
  externalAccountBinding: { kid: string; hmacKey: string } | null;
  /** Extra CA certificates (PEM file) trusted for the CA's HTTPS API, for a private CA; null: the system's. */
  caCertificates: string | null;
  /** Backoff after a failed order: first wait, doubling up to max. */
  retry: { minMs: number; maxMs: number };
  /**
   * Names whose key is kept across renewals: the hostnames of dane: true MX listeners (their
   * TLSA records name the key). A new key only by a planned rollover.
   */
  keepKey: string[];
  /** A rollover's next key is used this long after its TLSA record was printed (two TTLs). */
  rolloverDelayMs: number;
}

/** The MTA-STS policy host (RFC 8461) postern serves itself, and what it serves. */
export interface MtaStsConfig {
  listen: HostPort;
  /** Policy domains (the part after "mta-sts."), lowercased. */
  domains: string[];
  mode: 'enforce' | 'testing' | 'none';
  mx: string[];
  maxAgeS: number;
  /** TLS-RPT (RFC 8460) rua URIs for the _smtp._tls record; empty: none published. */
  tlsRpt: string[];
  /** The policy file as served (CRLF lines), and its id. */
  text: string;
  id: string;
}

export interface PosternConfig {
  /** Absolute path of the YAML file this came from. */
  file: string;
  log: { level: LogLevel; format: LogFormat };
  /** The admin HTTP endpoint (/metrics, /healthz, /readyz); null when off. */
  admin: { listen: HostPort } | null;
  /** Backend reachability checks (/readyz, postern_backend_up); intervalMs null: off. */
  backendChecks: { intervalMs: number | null };
  shutdown: { drainTimeoutMs: number };
  /** Worker processes; 1 runs everything in this process. */
  workers: number;
  /** Includes the ACME storage as an optional `dir` source (path "acme.storage") when acme is on. */
  certificates: CertificateSpec[];
  listeners: ListenerConfig[];
  /** Built-in ACME; null when off. */
  acme: AcmeConfig | null;
  /**
   * TLS session resumption: ticket keys derived from a secret (the key file's, shared by hosts;
   * else a random one per start, shared by the workers) and rotated every rotateMs.
   */
  sessionTickets: { keyFile: string | null; rotateMs: number };
  /** MTA-STS policy host; null when off. */
  mtaSts: MtaStsConfig | null;
}

/** One problem found in a configuration file, formatted as `file:line:col path: message`. */
export interface ConfigError {
  file: string;
  line: number;
  col: number;
  /** YAML path such as "listeners[1].sni"; "" for the document itself. */
  path: string;
  message: string;
}
