#!/bin/sh
# regcache @VERSION@: point this host's @RUNTIME@ at the regcache proxy @PROXY_URL@.
#
# Run as root:  curl -fsS '@PROXY_URL@/setup/systemd?runtime=@RUNTIME@' | sudo sh
#
# 1. downloads regcache's CA from @PROXY_URL@/ca.crt and checks it is the CA this script was
#    generated with;
# 2. adds it to the system trust store: Debian/Ubuntu and Alpine
#    /usr/local/share/ca-certificates/regcache.crt + update-ca-certificates, RHEL/Fedora
#    /etc/pki/ca-trust/source/anchors/regcache.crt + update-ca-trust extract;
# 3. writes /etc/systemd/system/@RUNTIME@.service.d/http-proxy.conf (HTTPS_PROXY, HTTP_PROXY,
#    NO_PROXY) and runs systemctl daemon-reload and systemctl restart @RUNTIME@. Restarting
#    stops running containers unless the runtime keeps them (dockerd "live-restore").
#
# Environment:
#   REGCACHE_SETUP_ROOT=DIR   write every file under DIR instead of / (image builds, tests).
#                             Services are not restarted; the trust store inside DIR is
#                             refreshed only where the tool can be pointed there (Debian's
#                             update-ca-certificates), otherwise the command to run is printed.
#   REGCACHE_SETUP_DRY_RUN=1  change nothing on this system: print the commands (trust store
#                             refresh, systemctl) instead of running them, and write the files
#                             under REGCACHE_SETUP_ROOT, or a scratch directory if it is unset.
#   REGCACHE_SETUP_OS=debian|rhel|alpine   skip the detection from /etc/os-release.
set -eu

proxy_url='@PROXY_URL@'
runtime='@RUNTIME@'
ca_sha256='@CA_SHA256@'
no_proxy_list='localhost,127.0.0.0/8,::1'

root="${REGCACHE_SETUP_ROOT:-}"
dry_run="${REGCACHE_SETUP_DRY_RUN:-}"

say() { printf 'regcache-setup: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }
run() { say "running: $*"; "$@"; }

if [ -z "$root" ] && [ -z "$dry_run" ] && [ "$(id -u)" != 0 ]; then
    die "run me as root: curl -fsS '$proxy_url/setup/systemd?runtime=$runtime' | sudo sh"
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
trap 'exit 1' HUP INT TERM
if [ -n "$dry_run" ] && [ -z "$root" ]; then
    root="$tmp/root"
    say "dry run: files go to $root (removed at exit); nothing on this system changes"
fi

# Fetches $1 into $2 straight from regcache, not through any proxy of the caller's.
fetch() {
    if have curl; then
        (unset http_proxy HTTP_PROXY https_proxy HTTPS_PROXY all_proxy ALL_PROXY; curl -fsS -o "$2" "$1")
    elif have wget; then
        (unset http_proxy HTTP_PROXY https_proxy HTTPS_PROXY all_proxy ALL_PROXY; wget -q -O "$2" "$1")
    else
        die "curl or wget is needed to download $1"
    fi
}

# debian, rhel or alpine: from REGCACHE_SETUP_OS, else ID and ID_LIKE in /etc/os-release,
# else from which trust store directory exists.
os_family() {
    if [ -n "${REGCACHE_SETUP_OS:-}" ]; then
        echo "$REGCACHE_SETUP_OS"
        return
    fi
    ids=''
    if [ -r "$root/etc/os-release" ]; then
        # Parsed, not sourced: the file is data.
        ids=$(sed -n -e 's/^ID=//p' -e 's/^ID_LIKE=//p' "$root/etc/os-release" | tr -d "\"'" | tr '\n' ' ')
    fi
    for id in $ids; do
        case "$id" in
            debian | ubuntu) echo debian; return ;;
            rhel | fedora | centos | rocky | almalinux | amzn | ol) echo rhel; return ;;
            alpine) echo alpine; return ;;
        esac
    done
    if [ -d "$root/etc/pki/ca-trust/source/anchors" ]; then
        echo rhel
    elif [ -d "$root/usr/local/share/ca-certificates" ]; then
        echo debian
    else
        echo unknown
    fi
}

# 1. The CA.
ca="$tmp/regcache-ca.crt"
fetch "$proxy_url/ca.crt" "$ca"
grep -q -e '-----BEGIN CERTIFICATE-----' "$ca" || die "$proxy_url/ca.crt is not a PEM certificate"
if have sha256sum; then
    got=$(sha256sum "$ca" | cut -d' ' -f1)
elif have openssl; then
    got=$(openssl dgst -sha256 -r "$ca" | cut -d' ' -f1)
else
    got=''
fi
if [ -z "$got" ]; then
    say "warning: neither sha256sum nor openssl found: the CA is not checked"
elif [ "$got" != "$ca_sha256" ]; then
    die "the CA at $proxy_url/ca.crt (sha256 $got) is not the one this script was made for; fetch the script again"
fi
if have openssl; then
    say "CA $(openssl x509 -noout -subject -in "$ca"), $(openssl x509 -noout -fingerprint -sha256 -in "$ca")"
fi

# 2. The system trust store.
family=$(os_family)
case "$family" in
    debian | alpine)
        anchor="$root/usr/local/share/ca-certificates/regcache.crt"
        refresh='update-ca-certificates'
        ;;
    rhel)
        anchor="$root/etc/pki/ca-trust/source/anchors/regcache.crt"
        refresh='update-ca-trust extract'
        ;;
    *)
        die "unknown distribution (set REGCACHE_SETUP_OS=debian, rhel or alpine, or install $proxy_url/ca.crt into the trust store by hand)"
        ;;
esac
mkdir -p "$(dirname "$anchor")"
cp "$ca" "$anchor"
chmod 0644 "$anchor"
say "CA installed as $anchor ($family)"

if [ -n "$dry_run" ]; then
    say "would run: $refresh"
elif [ -n "$root" ]; then
    if [ "$family" = debian ] && have update-ca-certificates; then
        mkdir -p "$root/etc/ssl/certs" "$root/etc/ca-certificates/update.d" "$root/usr/share/ca-certificates"
        [ -e "$root/etc/ca-certificates.conf" ] || : >"$root/etc/ca-certificates.conf"
        run update-ca-certificates \
            --certsconf "$root/etc/ca-certificates.conf" \
            --certsdir "$root/usr/share/ca-certificates" \
            --localcertsdir "$root/usr/local/share/ca-certificates" \
            --etccertsdir "$root/etc/ssl/certs" \
            --hooksdir "$root/etc/ca-certificates/update.d"
    else
        say "run '$refresh' inside $root to refresh its trust store"
    fi
else
    have "${refresh%% *}" || die "${refresh%% *} not found: install the ca-certificates package"
    # shellcheck disable=SC2086 # the command and its argument are split on purpose
    run $refresh
fi

# 3. The runtime's proxy settings.
dropin_dir="$root/etc/systemd/system/$runtime.service.d"
mkdir -p "$dropin_dir"
cat >"$dropin_dir/http-proxy.conf" <<EOF
# Written by regcache's setup script ($proxy_url/setup/systemd?runtime=$runtime).
# $runtime reads its proxy from its own environment; NO_PROXY keeps local traffic direct.
[Service]
Environment="HTTPS_PROXY=$proxy_url"
Environment="HTTP_PROXY=$proxy_url"
Environment="NO_PROXY=$no_proxy_list"
EOF
chmod 0644 "$dropin_dir/http-proxy.conf"
say "wrote $dropin_dir/http-proxy.conf"
[ -z "$dry_run" ] || sed 's/^/    /' "$dropin_dir/http-proxy.conf" >&2

if [ -n "$dry_run" ]; then
    say "would run: systemctl daemon-reload"
    say "would run: systemctl restart $runtime"
elif [ -n "$root" ]; then
    say "files written under $root: no service restarted"
elif [ ! -d /run/systemd/system ]; then
    say "systemd is not running here: restart $runtime yourself to apply the proxy settings"
else
    run systemctl daemon-reload
    run systemctl restart "$runtime"
fi

case "$runtime" in
    docker) say "done; check with: docker info | grep -i proxy" ;;
    *) say "done; check with: systemctl show $runtime --property=Environment" ;;
esac
