// Prometheus metrics. Names and labels are public API: add, never rename.
// Every refusal's reason code is a label value here and a field in the log line.
import { Counter, Histogram, Registry, Gauge, collectDefaultMetrics } from 'prom-client';
import { version } from './version.ts';

/**
 * How prom-client's process metrics are combined over workers (src/cluster.ts sums every
 * registry by default). Summing is right for CPU seconds, memory and GC, and wrong for a
 * per-process limit: EMFILE happens in one process, so the worker with the most open descriptors
 * against the lowest limit is what an alert needs. prom-client itself omits the start time and
 * takes the first version, and averages the event-loop lag.
 */
const PROCESS_AGGREGATORS: Readonly<Record<string, 'max' | 'min'>> = {
  process_open_fds: 'max',
  process_max_fds: 'min',
};

export class Metrics {
  readonly registry = new Registry();
  readonly connections = new Counter({
    name: 'postern_connections_total',
    help: 'Connections closed, by listener and close reason',
    labelNames: ['listener', 'reason'] as const,
    registers: [this.registry],
  });
  readonly accepted = new Counter({
    name: 'postern_connections_accepted_total',
    help: 'Connections accepted, by listener',
    labelNames: ['listener'] as const,
    registers: [this.registry],
  });
  readonly active = new Gauge({
    name: 'postern_connections_active',
    help: 'Connections open now',
    labelNames: ['listener'] as const,
    registers: [this.registry],
  });
  readonly sniDecisions = new Counter({
    name: 'postern_sni_decisions_total',
    help: 'Certificate decisions by listener, SNI class (none|exact|wildcard|unknown|invalid) and decision (served|fallback|refused)',
    labelNames: ['listener', 'class', 'decision'] as const,
    registers: [this.registry],
  });
  readonly alerts = new Counter({
    name: 'postern_alerts_sent_total',
    help: 'TLS alerts postern wrote itself before a handshake, by listener and alert',
    labelNames: ['listener', 'alert'] as const,
    registers: [this.registry],
  });
  readonly handshakes = new Counter({
    name: 'postern_handshakes_total',
    help: 'TLS handshakes by listener, TLS version and result',
    labelNames: ['listener', 'version', 'result'] as const,
    registers: [this.registry],
  });
  readonly backendConnect = new Histogram({
    name: 'postern_backend_connect_seconds',
    help: 'Time to connect to the backend',
    labelNames: ['listener'] as const,
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    registers: [this.registry],
  });
  readonly backendFailures = new Counter({
    name: 'postern_backend_connect_failures_total',
    help: 'Backend connections that failed, by listener and reason',
    labelNames: ['listener', 'reason'] as const,
    registers: [this.registry],
  });
  readonly bytes = new Counter({
    name: 'postern_bytes_total',
    help: 'Plaintext bytes carried, by listener and direction (in: client to backend, out: backend to client)',
    labelNames: ['listener', 'direction'] as const,
    registers: [this.registry],
  });
  readonly reloads = new Counter({
    name: 'postern_reloads_total',
    help: 'Configuration and certificate reloads by trigger (sighup|watch) and result (ok|failed)',
    labelNames: ['trigger', 'result'] as const,
    registers: [this.registry],
  });
  readonly certificateNotAfter = new Gauge({
    name: 'postern_certificate_not_after_seconds',
    help: 'Expiry of each loaded certificate (Unix time), by file and first name',
    labelNames: ['file', 'name'] as const,
    registers: [this.registry],
  });
  readonly internalErrors = new Counter({
    name: 'postern_internal_errors_total',
    help: 'Sessions ended by a fault inside postern (an exception, logged with its stack), by listener',
    labelNames: ['listener'] as const,
    registers: [this.registry],
  });
  readonly listenerCertificateMissing = new Gauge({
    name: 'postern_listener_certificate_missing',
    help: "1 when no loaded certificate covers the listener's hostname (a STARTTLS listener then cannot offer TLS), 0 when one does, by listener",
    labelNames: ['listener'] as const,
    // With workers: 1 when any worker lacks it (not the number of workers).
    aggregator: 'max',
    registers: [this.registry],
  });
  readonly plaintextSessions = new Counter({
    name: 'postern_plaintext_sessions_total',
    help: 'Sessions of a STARTTLS listener handed to the backend without TLS (the client never sent STARTTLS), by listener',
    labelNames: ['listener'] as const,
    registers: [this.registry],
  });
  readonly buildInfo = new Gauge({
    name: 'postern_build_info',
    help: 'Always 1; the labels say which postern (package version) runs on which Node.js',
    labelNames: ['version', 'node'] as const,
    // With workers: one process's 1, not the number of workers.
    aggregator: 'max',
    registers: [this.registry],
  });
  private processMetrics = false;

  constructor() {
    this.buildInfo.set({ version: version(), node: process.version }, 1);
  }

  /**
   * prom-client's process_* and nodejs_* metrics on this registry. Called once by `postern run`
   * (not by every Metrics: each call starts an event-loop delay monitor and a GC observer for
   * the life of the process, which the many registries of the tests do not need).
   */
  collectProcessMetrics(): void {
    if (this.processMetrics) return;
    this.processMetrics = true;
    collectDefaultMetrics({ register: this.registry });
    for (const [name, aggregator] of Object.entries(PROCESS_AGGREGATORS)) {
      const m = this.registry.getSingleMetric(name) as unknown as { aggregator?: string } | undefined;
      if (m) m.aggregator = aggregator;
    }
  }
  readonly starttlsInjections = new Counter({
    name: 'postern_starttls_injections_total',
    help: 'Bytes pipelined after STARTTLS that were discarded (CVE-2011-0411), by listener',
    labelNames: ['listener'] as const,
    registers: [this.registry],
  });
  readonly commandsRefused = new Counter({
    name: 'postern_commands_refused_total',
    help: 'Commands postern refused itself after STARTTLS or on a handed-off plaintext session (the session goes on), by listener and reason (line_too_long|starttls_refused|command_not_permitted)',
    labelNames: ['listener', 'reason'] as const,
    registers: [this.registry],
  });
  readonly resumptions = new Counter({
    name: 'postern_handshakes_resumed_total',
    help: 'TLS handshakes that resumed a session from a ticket (a subset of postern_handshakes_total{result="ok"}), by listener',
    labelNames: ['listener'] as const,
    registers: [this.registry],
  });
  readonly daneKeyChanges = new Counter({
    name: 'postern_dane_key_changes_total',
    help: 'Reloads that took a key out of service on a dane: true listener (its TLSA record must change in DNS), by listener',
    labelNames: ['listener'] as const,
    registers: [this.registry],
  });
  readonly mtaStsRequests = new Counter({
    name: 'postern_mta_sts_requests_total',
    help: 'Requests to the MTA-STS policy host, by result (served|not_found|bad_method|too_many_from_client|unknown_name: a TLS handshake for a name that is no policy host)',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });
  readonly acmeValidations = new Counter({
    name: 'postern_acme_tls_alpn_validations_total',
    help: 'ACME TLS-ALPN-01 validations (RFC 8737) answered on a listener, by listener and result (answered|failed)',
    labelNames: ['listener', 'result'] as const,
    registers: [this.registry],
  });
}

/**
 * The ACME manager's metrics, in the registry of the process that talks to the CA (the only
 * process, or the supervisor with workers: its admin endpoint appends them to the workers' sum).
 */
export class AcmeMetrics {
  readonly orders: Counter<'key_type' | 'result'>;
  readonly notAfter: Gauge<'name' | 'key_type'>;
  readonly nextRenewal: Gauge<'name' | 'key_type'>;
  readonly failures: Gauge<'name' | 'key_type'>;
  readonly httpRequests: Counter<'result'>;

  constructor(registry: Registry) {
    const registers = [registry];
    this.orders = new Counter({
      name: 'postern_acme_orders_total',
      help: 'ACME orders (a first certificate or a renewal), by key type and result (ok|failed)',
      labelNames: ['key_type', 'result'] as const,
      registers,
    });
    this.notAfter = new Gauge({
      name: 'postern_acme_certificate_not_after_seconds',
      help: 'Expiry of each ACME-managed certificate (Unix time; 0 before the first issuance), by name and key type',
      labelNames: ['name', 'key_type'] as const,
      registers,
    });
    this.nextRenewal = new Gauge({
      name: 'postern_acme_next_attempt_seconds',
      help: 'When the next order or renewal of each ACME-managed certificate is planned (Unix time), by name and key type',
      labelNames: ['name', 'key_type'] as const,
      registers,
    });
    this.failures = new Gauge({
      name: 'postern_acme_consecutive_failures',
      help: 'Failed orders in a row for each ACME-managed certificate (0 after a success), by name and key type',
      labelNames: ['name', 'key_type'] as const,
      registers,
    });
    this.httpRequests = new Counter({
      name: 'postern_acme_http_requests_total',
      help: 'Requests to the HTTP-01 listener, by result (answered|unknown_token|not_found|bad_method|too_many_from_client: a connection over the per-address cap, closed)',
      labelNames: ['result'] as const,
      registers,
    });
  }
}
