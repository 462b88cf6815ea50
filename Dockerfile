# regcache in a container: a release build on the Rust image, run as an unprivileged user on
# Debian slim (glibc, and the CA roots regcache trusts for upstream registries).
#
#   docker build -t regcache .
#   docker run -d -p 3128:3128 -v regcache-data:/var/lib/regcache/data -v regcache-ca:/var/lib/regcache/ca regcache
#   curl -fsS http://HOST:3128/ca.crt -o regcache-ca.crt      # give this CA to the clients
#
# Or with docker-compose.yml. Keep the CA volume: clients trust the CA generated in it.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --bin regcache \
    && strip target/release/regcache

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/regcache --shell /usr/sbin/nologin regcache \
    && install -d -o regcache -g regcache -m 0700 /var/lib/regcache /var/lib/regcache/data /var/lib/regcache/ca
COPY --from=build /src/target/release/regcache /usr/local/bin/regcache

USER 10001:10001
WORKDIR /var/lib/regcache
# Every interface of the container: the published port is the way in. Private networks only by
# default (regcache refuses to be an open proxy); narrow REGCACHE_ALLOW_CLIENT, or add
# REGCACHE_AUTH_HTPASSWD, for your site.
ENV REGCACHE_LISTEN=0.0.0.0:3128 \
    REGCACHE_ALLOW_CLIENT=127.0.0.0/8,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,::1/128,fc00::/7 \
    REGCACHE_DATA_DIR=/var/lib/regcache/data \
    REGCACHE_CA_DIR=/var/lib/regcache/ca \
    RUST_LOG=info
VOLUME ["/var/lib/regcache/data", "/var/lib/regcache/ca"]
EXPOSE 3128
# No curl in the image: bash's /dev/tcp asks /healthz, which answers 200 "ok" when ready.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/3128 && printf 'GET /healthz HTTP/1.0\\r\\nHost: 127.0.0.1\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["/usr/local/bin/regcache"]
CMD ["serve"]
