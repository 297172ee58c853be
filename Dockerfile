# postern: a TLS front door for mail servers.
# Build: docker build -t postern .        (--build-arg SOURCE_URL=<repository URL> for the label)
# Run:   docker run -d --network host -v /etc/postern:/etc/postern:ro \
#          -v /etc/letsencrypt:/etc/letsencrypt:ro postern
# .ci/image-check repeats these steps without Docker, so a broken recipe fails CI.

# ---- build: compile TypeScript to dist/, write postern.schema.json ----
FROM node:24-bookworm-slim AS build
WORKDIR /src
COPY package.json package-lock.json tsconfig.json tsconfig.build.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY src ./src
RUN npm run build

# ---- runtime: production dependencies and the files the npm package ships, nothing else ----
FROM node:24-bookworm-slim
# VERSION must equal package.json's version (.ci/image-check fails otherwise).
ARG VERSION=0.1.0
ARG SOURCE_URL=
LABEL org.opencontainers.image.title="postern" \
      org.opencontainers.image.description="A TLS front door for mail servers: per-listener SNI policy, STARTTLS, PROXY protocol" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE_URL}"
# POSTERN_CONFIG is the file `postern run`, `check` and `health` (the HEALTHCHECK) read when -c
# is not given. Mount the config elsewhere? Set POSTERN_CONFIG, and the healthcheck follows.
ENV NODE_ENV=production POSTERN_CONFIG=/etc/postern/postern.yaml
# Ports below 1024 as the unprivileged "node" user, wherever the container runs (with
# --network host, Docker's net.ipv4.ip_unprivileged_port_start=0 does not apply): node gets
# the one file capability CAP_NET_BIND_SERVICE. setcap comes from libcap2-bin, removed again.
# Node keeps reading NODE_OPTIONS and NODE_EXTRA_CA_CERTS when this is its only capability
# (docs/operations.md, Docker, lists what secure-execution mode does change).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libcap2-bin \
 && setcap cap_net_bind_service=+ep "$(readlink -f "$(command -v node)")" \
 && apt-get purge -y --auto-remove libcap2-bin \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/postern
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund && npm cache clean --force
COPY --from=build /src/dist ./dist
COPY --from=build /src/postern.schema.json ./
COPY bin ./bin
COPY config.example.yaml README.md LICENSE ./
# /var/lib/postern: where acme.storage goes (account key, live/<name>/...); mount a volume there
# so that certificates survive a new container (docs/acme.md).
RUN ln -s /opt/postern/bin/postern.js /usr/local/bin/postern && mkdir -p /etc/postern \
 && mkdir -p /var/lib/postern && chown node:node /var/lib/postern && chmod 0700 /var/lib/postern
USER node
# 25   SMTP, MTA-to-MTA delivery (STARTTLS, sni: fallback)
# 465  submissions, implicit TLS (RFC 8314)
# 587  submission with STARTTLS
# 143  IMAP with STARTTLS
# 993  IMAPS, implicit TLS
# 110  POP3 with STLS
# 995  POP3S, implicit TLS
# 443  HTTPS or any other TLS service (protocol: tls)
EXPOSE 25 465 587 143 993 110 995 443
# Liveness: GET /healthz on the admin endpoint named by admin.listen in $POSTERN_CONFIG (a
# wildcard address is probed on loopback). Without an admin endpoint it reports healthy: there
# is nothing to ask. The image has no curl or wget; `postern health` is node's http client.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 CMD ["postern", "health"]
ENTRYPOINT ["postern"]
CMD ["run", "-c", "/etc/postern/postern.yaml"]
