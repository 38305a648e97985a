#!/usr/bin/env bash
# Checks systemd/creditgate.service with `systemd-analyze verify` (installing the `systemd`
# package when the tool is missing). verify insists that ExecStart's binary exists, and the unit
# names the installed path (/usr/local/bin/creditgate), so the check runs on a copy of the unit
# pointing at the binary Cargo built. verify only warns about unknown or misspelt keys (exit 0),
# so any output at all counts as a failure here.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "systemd-analyze missing: installing the systemd package"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq systemd >/dev/null
fi

bin="${CARGO_TARGET_DIR:-target}/debug/creditgate"
if [ ! -x "$bin" ]; then
    cargo build --quiet --bin creditgate
fi
bin="$(realpath "$bin")"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
sed "s#/usr/local/bin/creditgate#${bin}#g" systemd/creditgate.service >"$tmp/creditgate.service"

out="$(systemd-analyze verify "$tmp/creditgate.service" 2>&1)" || {
    echo "$out"
    echo "systemd-analyze verify: FAILED"
    exit 1
}
if [ -n "$out" ]; then
    echo "$out"
    echo "systemd-analyze verify: warnings (treated as failure)"
    exit 1
fi
echo "systemd-analyze verify systemd/creditgate.service: OK"
