# Multi-stage build: a static-enough release binary on a slim Debian base with CA roots.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked && strip target/release/regcache

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/regcache /usr/local/bin/regcache
WORKDIR /var/lib/regcache
ENV REGCACHE_LISTEN=0.0.0.0:3128 \
    REGCACHE_DATA_DIR=/var/lib/regcache/data \
    REGCACHE_CA_DIR=/var/lib/regcache/ca
VOLUME ["/var/lib/regcache"]
EXPOSE 3128
ENTRYPOINT ["/usr/local/bin/regcache"]
CMD ["serve"]
