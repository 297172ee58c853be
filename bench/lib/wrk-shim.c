/*
 * LD_PRELOAD shim for wrk, built by bench/run.ts with the system C compiler.
 *
 * 1. Full handshakes only. wrk reuses one SSL object per connection slot and calls SSL_clear()
 *    between connections; OpenSSL keeps the session (the TLS 1.3 ticket) across SSL_clear(), so
 *    wrk resumes roughly every other connection. Dropping the session after SSL_clear() makes
 *    every connection a full handshake (checked by the harness at start: 0 resumptions).
 * 2. SNI. wrk sends the URL's host (127.0.0.1) as SNI; real clients send a host name, and
 *    postern refuses IP-literal SNI on strict listeners. With BENCH_SNI set, that name is sent.
 *
 * No OpenSSL headers needed: the two calls are declared here and resolved from wrk's libssl.
 */
typedef struct ssl_st SSL;
typedef struct ssl_session_st SSL_SESSION;
extern void *dlsym(void *handle, const char *symbol);
extern char *getenv(const char *name);
#define RTLD_NEXT ((void *)-1l)
#define SSL_CTRL_SET_TLSEXT_HOSTNAME 55

int SSL_set_session(SSL *s, SSL_SESSION *session);

int SSL_clear(SSL *s) {
  static int (*real)(SSL *);
  if (!real) real = (int (*)(SSL *))dlsym(RTLD_NEXT, "SSL_clear");
  int r = real(s);
  if (!getenv("BENCH_RESUME")) SSL_set_session(s, 0);
  return r;
}

long SSL_ctrl(SSL *s, int cmd, long larg, void *parg) {
  static long (*real)(SSL *, int, long, void *);
  if (!real) real = (long (*)(SSL *, int, long, void *))dlsym(RTLD_NEXT, "SSL_ctrl");
  if (cmd == SSL_CTRL_SET_TLSEXT_HOSTNAME) {
    const char *name = getenv("BENCH_SNI");
    if (name && *name) parg = (void *)name;
  }
  return real(s, cmd, larg, parg);
}
