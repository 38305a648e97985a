#!/usr/bin/env bash
# Fuzzes creditgate's core for SECONDS per target (default 120): `core` (datagram -> Action, the
# daemon's whole input path), `dialog` (the same, then the switch's answer to what was forwarded
# and the caller's in-dialog requests along the keyed Record-Route), `parser` (scanner + header
# grammar) and `relay` (sequences of requests and responses: every datagram goes to an upstream,
# a trusted node or back where its request came from). FUZZ_TARGETS="core" picks a subset.
# Installs cargo-fuzz when missing. Only the stable toolchain is assumed: cargo-fuzz passes
# nightly `-Z` flags (sanitizer, coverage instrumentation), which RUSTC_BOOTSTRAP=1 lets stable
# rustc accept.
#
# The seed corpus is rebuilt at each run from ../shared/corpus (RFC 4475 + RFC 5118 torture
# messages, PROTOS c07-sip rendered cases, pjproject seeds) into fuzz/corpus/ (git-ignored; the
# third-party files are never committed). Inputs libFuzzer finds are kept there between runs.
# Crashes land in fuzz/artifacts/TARGET/; reproduce with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run -O TARGET fuzz/artifacts/TARGET/crash-... (from fuzz/).
#
# One libFuzzer process per target, one after the other: one core busy, not the whole machine.
# Environment: CORPUS_SRC (default ../shared/corpus), FUZZ_MAX_LEN (default 16384 octets),
# FUZZ_TARGETS (default "core dialog parser relay").
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
secs=${1:-120}
src=${CORPUS_SRC:-$root/../shared/corpus}
max_len=${FUZZ_MAX_LEN:-16384}

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1

seed() {
  local target=$1
  local dir=$root/fuzz/corpus/$target
  mkdir -p "$dir"
  if [ ! -d "$src" ]; then
    echo "== no seed corpus at $src: fuzzing from what fuzz/corpus/$target holds"
    return
  fi
  local files=()
  while IFS= read -r -d '' f; do files+=("$f"); done < <(
    find "$src/rfc4475" "$src/pjsip-seeds" -type f \( -name '*.dat' -o -name '*.sip' -o -name '*.uri' -o -name '*.txt' -o -path '*/archive/*' \) -print0
  )
  local protos=()
  while IFS= read -r -d '' f; do protos+=("$f"); done < <(
    find "$src/protos-c07-sip/rendered" -type f -name '*.sip' -print0 2>/dev/null
  )
  local n=0 f base
  if [ "$target" = relay ]; then
    # One raw step per seed (see fuzz/fuzz_targets/relay.rs): op 0, source 0 (a customer) or
    # 5 (the switch), a 2-byte length, the message. Templated steps need no seeds.
    for f in "${files[@]}"; do
      base=$(echo "$f" | sed "s|^$src/||; s|/|_|g")
      local len
      len=$(wc -c < "$f")
      [ "$len" -lt 65536 ] || continue
      for sel in 0 5; do
        { printf "\\x00\\x0$sel\\x$(printf %02x $((len >> 8)))\\x$(printf %02x $((len & 255)))"; cat "$f"; } > "$dir/seed-$sel-$base"
        n=$((n + 1))
      done
    done
  elif [ "$target" != parser ]; then
    # Byte 0 selects the source address (see fuzz/fuzz_targets/core.rs): 0 a customer,
    # 1 an account identified by IP (192.0.2.7), 2 the switch.
    for f in "${files[@]}"; do
      base=$(echo "$f" | sed "s|^$src/||; s|/|_|g")
      for sel in 0 1 2; do
        { printf "\\x0$sel"; cat "$f"; } > "$dir/seed-$sel-$base"
        n=$((n + 1))
      done
    done
    for f in "${protos[@]}"; do
      { printf '\x00'; cat "$f"; } > "$dir/seed-0-protos-$(basename "$f")"
      n=$((n + 1))
    done
  else
    for f in "${files[@]}" "${protos[@]}"; do
      base=$(echo "$f" | sed "s|^$src/||; s|/|_|g")
      cp "$f" "$dir/seed-$base"
      n=$((n + 1))
    done
  fi
  echo "== $target: $n seed files in fuzz/corpus/$target"
}

cd "$root/fuzz"
status=0
for target in ${FUZZ_TARGETS:-core dialog parser relay}; do
  seed "$target"
  echo "== cargo fuzz run $target for ${secs}s ($(date -u +%H:%M:%S) UTC)"
  if ! nice -n 10 cargo fuzz run -O "$target" "corpus/$target" -- \
    -max_total_time="$secs" -max_len="$max_len" -timeout=10 -print_final_stats=1; then
    echo "== $target: FAILED (see fuzz/artifacts/$target/)"
    status=1
  fi
done
exit $status
