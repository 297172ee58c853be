# postern: a TLS front door for mail servers.
# Build: docker build -t postern .
# Run:   docker run -v /etc/postern:/etc/postern:ro -p 25:25 -p 465:465 ... postern
# .ci/image-check repeats these steps without Docker, so a broken recipe fails CI.

# ---- build: compile TypeScript to dist/ ----
FROM node:24-bookworm-slim AS build
WORKDIR /src
COPY package.json package-lock.json tsconfig.json tsconfig.build.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY src ./src
RUN npm run build

# ---- runtime: production dependencies and the compiled code only ----
FROM node:24-bookworm-slim
ENV NODE_ENV=production
WORKDIR /opt/postern
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund && npm cache clean --force
COPY --from=build /src/dist ./dist
COPY bin ./bin
COPY config.example.yaml ./
RUN ln -s /opt/postern/bin/postern.js /usr/local/bin/postern && mkdir -p /etc/postern
# Runs as the image's unprivileged "node" user. Docker (20.10+) sets
# net.ipv4.ip_unprivileged_port_start=0 inside the container, so ports below 1024 still bind.
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
ENTRYPOINT ["postern"]
CMD ["run", "-c", "/etc/postern/postern.yaml"]
