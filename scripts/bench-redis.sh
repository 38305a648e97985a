#!/usr/bin/env bash
# Benchmark of the Redis credit source (issue 3): loads N accounts (default 1,000,000) into a
# local redis-server of its own on a free loopback port with `creditgate accounts import`, runs
# the daemon on it, and measures
#   * the full refresh time (first load into an empty snapshot, then forced refreshes of a full one),
#   * the daemon's peak RSS (VmHWM),
#   * INVITE admission latency p50/p99 over UDP with no refresh running vs during a refresh
#     (examples/udp_load.rs; the refresh is forced with SIGHUP as the load run starts).
# Not a test: it asserts nothing and prints a Markdown block for BENCHMARKS.md.
#
#   scripts/bench-redis.sh [ACCOUNTS] [RATE] [SECONDS]     (defaults: 1000000 2000 6)
#
# Loopback only; every process it starts is stopped on exit.
set -euo pipefail

ACCOUNTS=${1:-1000000}
RATE=${2:-2000}
SECONDS_OUT=${3:-6}
cd "$(dirname "$0")/.."
ROOT=$(pwd)

command -v redis-server >/dev/null || { echo "redis-server is not installed (apt-get install -y redis-server)" >&2; exit 1; }

cargo build --release --quiet --bin creditgate --example udp_load
# CREDITGATE_BIN=/path/to/creditgate compares another build (e.g. another allocator).
BIN="${CREDITGATE_BIN:-$ROOT/target/release/creditgate}"
LOAD="$ROOT/target/release/examples/udp_load"

WORK=$(mktemp -d /tmp/creditgate-bench.XXXXXX)
REDIS_PID=""
DAEMON_PID=""
cleanup() {
    [ -n "$DAEMON_PID" ] && kill "$DAEMON_PID" 2>/dev/null || true
    [ -n "$REDIS_PID" ] && kill "$REDIS_PID" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { # $1 = tcp|udp
    python3 - "$1" <<'EOF'
import socket, sys
kind = socket.SOCK_STREAM if sys.argv[1] == "tcp" else socket.SOCK_DGRAM
s = socket.socket(socket.AF_INET, kind)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
EOF
}

LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
REDIS_PORT=$(free_port tcp)
SIP_PORT=$(free_port udp)
SWITCH_PORT=$(free_port udp)

${REDIS_NICE:+nice -n $REDIS_NICE} redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" \
    >"$WORK/redis.log" 2>&1 &
REDIS_PID=$!
for _ in $(seq 100); do
    [ "$(redis-cli -p "$REDIS_PORT" PING 2>/dev/null)" = "PONG" ] && break
    sleep 0.1
done

cat >"$WORK/creditgate.toml" <<EOF
[sip]
listen = ["127.0.0.1:$SIP_PORT"]
upstream = ["127.0.0.2:$SWITCH_PORT"]
workers = 2
secret = "benchmark-secret-0123456789abcdef"

[credit]
source = "redis"
redis_url = "redis://127.0.0.1:$REDIS_PORT/0"
key_prefix = "cg:"
refresh_interval = "1h"
max_staleness = "2h"

[admin]
listen = ""

[log]
level = "info"
format = "text"
EOF

# Accounts acct-0 .. acct-(N-1): every 10th has no credit (refused with 402), the rest admitted.
awk -v n="$ACCOUNTS" 'BEGIN {
    print "id,balance,debit_limit,enabled,currency";
    for (i = 0; i < n; i++) printf "acct-%d,%s,0,1,EUR\n", i, (i % 10 == 5) ? "0.0000" : sprintf("%d.%04d", i % 1000 + 1, i % 10000);
}' >"$WORK/accounts.csv"

t0=$(date +%s.%N)
"$BIN" accounts import "$WORK/accounts.csv" --config "$WORK/creditgate.toml" >"$WORK/import.out"
t1=$(date +%s.%N)
IMPORT_S=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
REDIS_MEM=$(redis-cli -p "$REDIS_PORT" INFO memory | awk -F: '/^used_memory_human/ {print $2}' | tr -d '\r')
echo "import: $(cat "$WORK/import.out" | head -1) in ${IMPORT_S}s; redis used_memory $REDIS_MEM" >&2

# Debug level for the source only: its "full load read took_ms=" line splits a refresh into
# reading Redis and applying to the snapshot.
RUST_LOG=info,creditgate::source::redis=debug NO_COLOR=1 "$BIN" run --config "$WORK/creditgate.toml" \
    2>"$WORK/daemon.log" &
DAEMON_PID=$!

refreshes() { grep -c "snapshot refreshed" "$WORK/daemon.log" || true; }
wait_refreshes() { # $1 = count
    for _ in $(seq 1200); do
        [ "$(refreshes)" -ge "$1" ] && return 0
        sleep 0.05
    done
    echo "timed out waiting for refresh $1" >&2; cat "$WORK/daemon.log" >&2; exit 1
}
took_ms() { # $1 = nth refresh; $2 = log line ("snapshot refreshed" = whole, "full load read" = Redis part)
    grep "${2:-snapshot refreshed}" "$WORK/daemon.log" | sed -n "${1}p" | sed 's/\x1b\[[0-9;]*m//g' | grep -o 'took_ms=[0-9]*' | cut -d= -f2
}
rss() { awk -v k="$1:" '$1 == k {print $2 / 1024 " MiB"}' /proc/"$DAEMON_PID"/status; }

wait_refreshes 1
FIRST_MS=$(took_ms 1)
FIRST_READ_MS=$(took_ms 1 "full load read")
RSS_AFTER_LOAD=$(rss VmRSS)
echo "first load: ${FIRST_MS} ms, RSS $RSS_AFTER_LOAD" >&2
sleep 1

load() { # $1 = label, $2 = seconds
    "$LOAD" --target "127.0.0.1:$SIP_PORT" --switch "127.0.0.2:$SWITCH_PORT" --rate "$RATE" \
        --duration "$2" --accounts "$ACCOUNTS" --prefix acct- --label "$1"
}

RESULTS=()
RESULTS+=("$(load outside-1 "$SECONDS_OUT")")
# During: force a refresh (SIGHUP) as the load run starts; the run lasts as long as a refresh.
DURING_S=$(( (FIRST_MS + 999) / 1000 ))
[ "$DURING_S" -lt 2 ] && DURING_S=2
N=1
for i in 1 2 3; do
    N=$((N + 1))
    kill -HUP "$DAEMON_PID"
    RESULTS+=("$(load during-$i "$DURING_S")")
    wait_refreshes "$N"
    sleep 1
done
RESULTS+=("$(load outside-2 "$SECONDS_OUT")")
REFRESH_MS=()
READ_MS=()
for i in $(seq 2 "$N"); do
    REFRESH_MS+=("$(took_ms "$i")")
    READ_MS+=("$(took_ms "$i" "full load read")")
done
CPU_DAEMON=$(awk '{printf "%.1f", ($14 + $15) / 100}' /proc/"$DAEMON_PID"/stat)
CPU_REDIS=$(awk '{printf "%.1f", ($14 + $15) / 100}' /proc/"$REDIS_PID"/stat)

HWM=$(rss VmHWM)
RSS_END=$(rss VmRSS)

cat <<EOF

### Run: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -r), load average before: $LOADAVG

Command: \`scripts/bench-redis.sh $ACCOUNTS $RATE $SECONDS_OUT\`

| measure | value |
|---|---|
| accounts in Redis | $ACCOUNTS (redis used_memory $REDIS_MEM) |
| \`accounts import\` of the CSV | ${IMPORT_S} s |
| full refresh, first load (empty snapshot) | ${FIRST_MS} ms (reading Redis ${FIRST_READ_MS} ms) |
| full refresh, forced, full snapshot unchanged | ${REFRESH_MS[*]} ms (reading Redis ${READ_MS[*]} ms) |
| CPU used over the whole run | daemon ${CPU_DAEMON} s, redis-server ${CPU_REDIS} s |
| daemon RSS after the first load | $RSS_AFTER_LOAD |
| daemon peak RSS (VmHWM) at the end | $HWM (VmRSS $RSS_END) |

Admission latency (caller sends INVITE → INVITE at the switch, or → 402 at the caller), $RATE
INVITEs/s over accounts spread across all $ACCOUNTS:

\`\`\`
$(printf '%s\n' "${RESULTS[@]}")
\`\`\`
EOF
