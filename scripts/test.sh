#!/usr/bin/env bash
# Runs creditgate's whole test suite: formatting, lints, unit tests, the integration tests against
# the real binary (real UDP, real SIPp, real redis-server) and the RFC 4475 / PROTOS suites.
# Installs what is missing first (SIPp as Debian's sip-tester, redis-server), so it works on a
# fresh Debian/Ubuntu machine as root (or with sudo).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust >= 1.85 with rustup (https://rustup.rs), then run this again" >&2
  exit 1
fi

need_apt=()
command -v sipp >/dev/null 2>&1 || need_apt+=(sip-tester)
# /bin/kill (signals in the integration tests; the unit's ExecReload= names it).
[ -x /bin/kill ] || need_apt+=(procps)
# A C/C++ toolchain: mimalloc is built from C, libFuzzer (scripts/fuzz.sh) from C++.
command -v cc >/dev/null 2>&1 && command -v c++ >/dev/null 2>&1 || need_apt+=(build-essential)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
# svwar / svcrack: the scanner and password-guesser tests (tests/integration/sipvicious.rs)
command -v svwar >/dev/null 2>&1 || need_apt+=(sipvicious)
# unshare (netns torture run), setpriv and prlimit (scheduling tests)
for c in unshare setpriv prlimit; do command -v "$c" >/dev/null 2>&1 || { need_apt+=(util-linux); break; }; done
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing: ${need_apt[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets -- -D warnings
echo "== cargo build"
cargo build --all-targets
echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --no-fail-fast
else
  cargo test --no-fail-fast
fi
echo "== systemd-analyze verify systemd/creditgate.service"
systemd/verify-unit.sh

# The test runner hides a passing test's output, so say here what did not run.
if [ ! -f ../shared/corpus/rfc4475/INDEX.tsv ]; then
  echo "NOTE: the RFC 4475 / PROTOS corpus suites (tests/torture.rs) were SKIPPED: ../shared/corpus not found (they passed without running)" >&2
fi
command -v sipp >/dev/null 2>&1 || echo "NOTE: the SIPp tests were SKIPPED: sipp not found" >&2
