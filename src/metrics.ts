// Prometheus metrics. Names and labels are public API: add, never rename.
// Every refusal's reason code is a label value here and a field in the log line.
import { Counter, Histogram, Registry, Gauge } from 'prom-client';

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
  readonly starttlsInjections = new Counter({
    name: 'postern_starttls_injections_total',
    help: 'Bytes pipelined after STARTTLS that were discarded (CVE-2011-0411), by listener',
    labelNames: ['listener'] as const,
    registers: [this.registry],
  });
}
