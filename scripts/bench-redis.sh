#!/usr/bin/env bash
# Benchmark of the Redis credit source (issue 3): loads N accounts (default 1,000,000) into a
# local redis-server of its own on a free loopback port with `creditgate accounts import`, then
# runs the daemon on it once per packet-thread scheduling mode in MODES (default: the default
# `[sip] realtime_priority = 0`, then `realtime_priority = 10`, side by side on the same Redis
# and data) and measures for each
#   * the full refresh time (first load into an empty snapshot, then refreshes of a full one),
#   * the daemon's CPU per refresh and peak RSS (VmHWM),
#   * INVITE admission latency p50/p99 over UDP with no refresh running vs during a refresh
#     (examples/udp_load.rs), in ROUNDS alternating pairs: a run with no refresh, then a run
#     that asks for a refresh through the admin API (POST /refresh) as its first INVITE goes out
#     and counts only the INVITEs sent until the refresh answered. Latency is taken from the
#     kernel's own timestamps at both ends (TX at the caller's socket, RX at the switch's or
#     the caller's), so the load tool's own waits for a CPU are not counted; its user-space
#     figures are printed beside them.
# Not a test: it asserts nothing and prints a Markdown block for BENCHMARKS.md, ending with the
# medians over the rounds and their ratio for each mode.
#
#   scripts/bench-redis.sh [ACCOUNTS] [RATE] [SECONDS] [ROUNDS]    (defaults: 1000000 2000 4 6)
#   MODES="0 10" (the realtime_priority values to run; SCHED_FIFO needs root or CAP_SYS_NICE)
#
# Loopback only; every process it starts is stopped on exit.
set -euo pipefail

ACCOUNTS=${1:-1000000}
RATE=${2:-2000}
SECONDS_OUT=${3:-4}
ROUNDS=${4:-6}
MODES=${MODES:-0 10}
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
ADMIN_PORT=$(free_port tcp)

${REDIS_NICE:+nice -n $REDIS_NICE} redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" \
    >"$WORK/redis.log" 2>&1 &
REDIS_PID=$!
for _ in $(seq 100); do
    [ "$(redis-cli -p "$REDIS_PORT" PING 2>/dev/null)" = "PONG" ] && break
    sleep 0.1
done

write_config() { # $1 = realtime_priority
    cat >"$WORK/creditgate.toml" <<EOF
[sip]
listen = ["127.0.0.1:$SIP_PORT"]
upstream = ["127.0.0.2:$SWITCH_PORT"]
workers = 2
realtime_priority = $1
secret = "benchmark-secret-0123456789abcdef"
# The load generator is one source far above any customer's rate: no flood guard.
source_pps_limit = 0

[credit]
source = "redis"
redis_url = "redis://127.0.0.1:$REDIS_PORT/0"
key_prefix = "cg:"
refresh_interval = "1h"
max_staleness = "2h"

[admin]
listen = "127.0.0.1:$ADMIN_PORT"

[log]
level = "info"
format = "text"
EOF
}
write_config 0

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
echo "import: $(head -1 "$WORK/import.out") in ${IMPORT_S}s; redis used_memory $REDIS_MEM" >&2

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
rss() { awk -v k="$1:" '$1 == k {printf "%.0f MiB", $2 / 1024}' /proc/"$DAEMON_PID"/status; }
cpu_s() { awk '{printf "%.2f", ($14 + $15) / 100}' /proc/"$1"/stat; }
load() { # $1 = label, $2 = seconds, then extra arguments
    local label=$1 secs=$2
    shift 2
    "$LOAD" --target "127.0.0.1:$SIP_PORT" --switch "127.0.0.2:$SWITCH_PORT" --rate "$RATE" \
        --duration "$secs" --accounts "$ACCOUNTS" --prefix acct- --label "$label" "$@"
}
# Median over the rounds of one kind's p50 or p99 (the kernel-timestamp figure, before "| user:").
median_of() { # $1 = file of result lines, $2 = outside|during, $3 = p50|p99
    grep "^$2-" "$1" | sed -E "s/ \| user:.*//; s/.* $3=([0-9]+)us.*/\1/" | sort -n |
        awk '{v[NR] = $1} END {if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }

SUMMARY=()
measure() { # $1 = realtime_priority
    local rtp=$1 results="$WORK/results-$1.txt"
    write_config "$rtp"
    : >"$results"
    # Debug level for the source only: its "full load read took_ms=" line splits a refresh into
    # reading Redis and applying to the snapshot.
    RUST_LOG=info,creditgate::source::redis=debug NO_COLOR=1 "$BIN" run --config "$WORK/creditgate.toml" \
        2>"$WORK/daemon.log" &
    DAEMON_PID=$!
    wait_refreshes 1
    local first_ms first_read_ms rss_after sched
    first_ms=$(took_ms 1)
    first_read_ms=$(took_ms 1 "full load read")
    rss_after=$(rss VmRSS)
    sched=$(grep -o "packet worker threads run under SCHED_FIFO\|cannot put the packet worker threads under SCHED_FIFO" "$WORK/daemon.log" | head -1 || true)
    echo "realtime_priority $rtp: first load ${first_ms} ms, RSS $rss_after ${sched:+($sched)}" >&2
    sleep 1
    local cpu0 redis0 n=1 during_s
    cpu0=$(cpu_s "$DAEMON_PID")
    redis0=$(cpu_s "$REDIS_PID")
    # A run "during" lasts as long as a refresh plus a second; only the INVITEs sent before the
    # refresh answered count.
    during_s=$(((first_ms + 1999) / 1000))
    for i in $(seq "$ROUNDS"); do
        load "outside-$i" "$SECONDS_OUT" >>"$results"
        sleep 0.5
        n=$((n + 1))
        load "during-$i" "$during_s" --refresh "127.0.0.1:$ADMIN_PORT" >>"$results"
        wait_refreshes "$n"
        sleep 0.5
    done
    local refresh_ms=() read_ms=()
    for i in $(seq 2 "$n"); do
        refresh_ms+=("$(took_ms "$i")")
        read_ms+=("$(took_ms "$i" "full load read")")
    done
    local cpu_daemon cpu_redis hwm rss_end
    cpu_daemon=$(awk -v a="$cpu0" -v b="$(cpu_s "$DAEMON_PID")" -v r="$ROUNDS" 'BEGIN {printf "%.2f", (b - a) / r}')
    cpu_redis=$(awk -v a="$redis0" -v b="$(cpu_s "$REDIS_PID")" -v r="$ROUNDS" 'BEGIN {printf "%.2f", (b - a) / r}')
    hwm=$(rss VmHWM)
    rss_end=$(rss VmRSS)
    kill "$DAEMON_PID"
    wait "$DAEMON_PID" 2>/dev/null || true
    DAEMON_PID=""
    local o50 d50 o99 d99
    o50=$(median_of "$results" outside p50)
    d50=$(median_of "$results" during p50)
    o99=$(median_of "$results" outside p99)
    d99=$(median_of "$results" during p99)
    SUMMARY+=("| $rtp | ${first_ms} ms | $(printf '%s\n' "${refresh_ms[@]}" | sort -n | sed -n "$(((ROUNDS + 1) / 2))p") ms | $hwm | $o99 µs | $d99 µs | $(ratio "$d99" "$o99") |")
    cat <<EOF

#### \`realtime_priority = $rtp\`${sched:+ ($sched)}

| measure | value |
|---|---|
| full refresh, first load (empty snapshot) | ${first_ms} ms (reading Redis ${first_read_ms} ms) |
| full refresh of an unchanged full snapshot (POST /refresh) | ${refresh_ms[*]} ms (reading Redis ${read_ms[*]} ms) |
| CPU per round (a 4 s run, then a refresh with load) | daemon ${cpu_daemon} s, redis-server ${cpu_redis} s |
| daemon RSS after the first load | $rss_after |
| daemon peak RSS (VmHWM) at the end | $hwm (VmRSS $rss_end) |

\`\`\`
$(cat "$results")
\`\`\`

| median over $ROUNDS rounds | no refresh | during a refresh | ratio |
|---|---|---|---|
| p50 | $o50 µs | $d50 µs | $(ratio "$d50" "$o50") |
| p99 | $o99 µs | $d99 µs | $(ratio "$d99" "$o99") |
EOF
}

cat <<EOF

### Run: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -r), load average before: $LOADAVG

Command: \`MODES="$MODES" scripts/bench-redis.sh $ACCOUNTS $RATE $SECONDS_OUT $ROUNDS\`

$ACCOUNTS accounts in Redis (redis used_memory $REDIS_MEM), written by \`accounts import\` in
${IMPORT_S} s. Admission latency: the caller's INVITE leaving its socket → arriving at the switch,
or → creditgate's 402 arriving back at the caller, by the kernel's timestamps (\`user:\` = by the
load tool's own clock); $RATE INVITEs/s over accounts spread across all $ACCOUNTS; $ROUNDS rounds
of a run with no refresh, then a run during a refresh.
EOF
for mode in $MODES; do
    measure "$mode"
done
cat <<EOF

| realtime_priority | first load | refresh (median) | peak RSS | p99 no refresh (median) | p99 during a refresh (median) | ratio |
|---|---|---|---|---|---|---|
$(printf '%s\n' "${SUMMARY[@]}")
EOF
