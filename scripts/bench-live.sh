#!/usr/bin/env bash
# The cost of live credit (issue 11, SPEC section 7): two creditgate daemons from the same
# binary, side by side in one run, on the same Redis and the same accounts, 2 workers each:
#   * "off": no [live] keys (snapshot check only),
#   * "on":  everything on: track_calls, reserve = "60s", credit_scaled_channels = true,
#            low_credit_threshold = "1.00" (events on Redis {prefix}events), accounts with
#            max_channels, max_cps, daily_spend_limit (high enough never to refuse) and a tariff
#            of ~1000 prefixes (TARIFF=1, the default) or rate_per_min (TARIFF=0).
# The accounts are loaded into a redis-server of the script's own (free loopback port, no
# persistence) with `creditgate accounts import`; both daemons read them from there.
#
# Two loads, each rate REPS times per daemon, interleaved (the order rotates per repetition):
#   1. SIPp whole calls (sipp-scenarios/uac-allowed.xml against uas.xml: INVITE/100/180/200/ACK,
#      a hold of SIPP_HOLD_MS, BYE/200), one trunk account, RATE calls/s for SECONDS: successful
#      and failed calls, SIPp's call-setup time (INVITE sent → 200 received, response time 1 of
#      the scenario's rtd; SIPp's clock has 1 ms resolution) p50/p99 and mean.
#   2. examples/udp_load.rs: new-call INVITEs only over ACCOUNTS accounts (every 10th without
#      credit: 402), its switch side records the INVITEs and answers nothing, so with tracking on
#      the calls ring until `ring_timeout`. p50/p99 by the kernel's timestamps, lost. The
#      tracking daemons' ring_timeout is RING_TIMEOUT (default "2s", the minimum is 1s), and every
#      load run's CPU window (every daemon's) ends RING_TIMEOUT + 2 s after the load tool, so the
#      removal of each of its calls by the ring timeout is charged to the run that made it.
# For every run: the daemon's CPU during the run (utime + stime from /proc/PID/stat, 10 ms
# ticks; and the sum of its threads' run time from /proc/PID/task/*/schedstat, ns), per call
# (SIPp: per successful call, i.e. 7 datagrams through creditgate; load tool: per answered
# INVITE), and the mean of the daemon's own decision latency histogram (creditgate_decision_
# latency sum/count from /metrics, per datagram).
# Prints every raw line, then a Markdown block of medians with the on/off ratio.
# Not a test: it asserts nothing beyond both daemons completing a warm-up.
#
#   scripts/bench-live.sh [ACCOUNTS] [SECONDS] [REPS] [SIPP_RATES] [LOAD_RATES]
#   scripts/bench-live.sh 100000 5 3 "500 2000" "10000 20000"      # the defaults
#
# VARIANTS adds daemons that isolate a part of the cost, interleaved with the two above and
# compared with "off": "track" (track_calls only, no limit or event option) and "nolow"
# (everything of "on" but low_credit_threshold), e.g. VARIANTS="track nolow".
#
# Environment: TARIFF=0|1 (default 1), SIPP_HOLD_MS (default 1000), RING_TIMEOUT (default "2s"),
# PERF=1 (at the end, one more load-tool run at the highest rate on the "on" daemon under
# `perf record --call-graph dwarf`, not counted; prints the top frames), CREDITGATE_BIN / LOAD_BIN (use these
# binaries, build nothing), KEEP=1 (keep the work directory).
#
# Loopback only (the daemons on 127.0.0.4 (off), 127.0.0.6 (on), 127.0.0.7 (track) and
# 127.0.0.8 (nolow), the callers on 127.0.0.1, the switch on 127.0.0.2, Redis on 127.0.0.1);
# every loop is bounded and every process it starts is stopped on exit.
set -euo pipefail

ACCOUNTS=${1:-100000}
DURATION=${2:-5}
REPS=${3:-3}
SIPP_RATES=${4-"500 2000"}
LOAD_RATES=${5-"10000 20000"}
TARIFF=${TARIFF:-1}
SIPP_HOLD_MS=${SIPP_HOLD_MS:-1000}
RING_TIMEOUT=${RING_TIMEOUT:-2s}
cd "$(dirname "$0")/.."
ROOT=$(pwd)

for tool in redis-server redis-cli sipp python3 curl ss; do
    command -v "$tool" >/dev/null || { echo "$tool is needed (redis-server, sip-tester, python3, curl, iproute2)" >&2; exit 1; }
done

if [ -z "${CREDITGATE_BIN:-}" ]; then
    cargo build --release --quiet --bin creditgate --example udp_load
fi
BIN=${CREDITGATE_BIN:-$ROOT/target/release/creditgate}
LOAD=${LOAD_BIN:-$ROOT/target/release/examples/udp_load}
SCEN="$ROOT/sipp-scenarios"

DAEMONS="off on ${VARIANTS:-}"
for d in $DAEMONS; do
    case $d in off | on | track | nolow) ;; *) echo "unknown variant $d (track, nolow)" >&2; exit 2 ;; esac
done
WORK=$(mktemp -d /tmp/creditgate-bench-live.XXXXXX)
REDIS_PID=""
UAS_PID=""
PERF_PID=""
declare -A PID ADDR ADMIN
cleanup() {
    [ -n "$PERF_PID" ] && kill -INT "$PERF_PID" 2>/dev/null || true
    [ -n "$UAS_PID" ] && kill "$UAS_PID" 2>/dev/null || true
    for p in "${PID[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -n "$REDIS_PID" ] && kill "$REDIS_PID" 2>/dev/null || true
    wait 2>/dev/null || true
    if [ -n "${KEEP:-}" ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

free_port() { # $1 = IP, $2 = tcp|udp
    python3 - "$1" "$2" <<'EOF'
import socket, sys
kind = socket.SOCK_STREAM if sys.argv[2] == "tcp" else socket.SOCK_DGRAM
s = socket.socket(socket.AF_INET, kind)
s.bind((sys.argv[1], 0))
print(s.getsockname()[1])
EOF
}

declare -A IP=([off]=127.0.0.4 [on]=127.0.0.6 [track]=127.0.0.7 [nolow]=127.0.0.8)
for d in $DAEMONS; do
    ADDR[$d]=${IP[$d]}:$(free_port "${IP[$d]}" udp)
    ADMIN[$d]=127.0.0.1:$(free_port 127.0.0.1 tcp)
done
SWITCH_PORT=$(free_port 127.0.0.2 udp)
SWITCH_ADDR=127.0.0.2:$SWITCH_PORT
UAC_PORT=$(free_port 127.0.0.1 udp)
REDIS_PORT=$(free_port 127.0.0.1 tcp)
LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
NUMBER=4930123456
TRUNK=sipp-trunk

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" \
    >"$WORK/redis.log" 2>&1 &
REDIS_PID=$!
for _ in $(seq 100); do
    [ "$(redis-cli -p "$REDIS_PORT" PING 2>/dev/null)" = "PONG" ] && break
    sleep 0.1
done

# write_config NAME: the daemon's configuration, its [live] table by variant.
write_config() {
    set -- "$1" "${ADDR[$1]}" "${ADMIN[$1]}"
    cat >"$WORK/$1.toml" <<EOF
[sip]
listen = ["$2"]
upstream = ["$SWITCH_ADDR"]
workers = 2
secret = "benchmark-secret-0123456789abcdef"
# The load generators are one source each, far above any customer's rate: no flood guard.
source_pps_limit = 0
recv_buffer = "4MiB"

[credit]
source = "redis"
redis_url = "redis://127.0.0.1:$REDIS_PORT/0"
key_prefix = "cg:"
refresh_interval = "1h"
max_staleness = "2h"

[identify]
order = ["from_user"]

[admin]
listen = "$3"

[log]
level = "warn"
format = "text"
EOF
    case $1 in
        on | nolow)
            cat >>"$WORK/$1.toml" <<EOF

[live]
track_calls = true
reserve = "60s"
credit_scaled_channels = true
ring_timeout = "$RING_TIMEOUT"
EOF
            if [ "$1" = on ]; then echo 'low_credit_threshold = "1.00"' >>"$WORK/$1.toml"; fi
            ;;
        track)
            cat >>"$WORK/$1.toml" <<EOF

[live]
track_calls = true
ring_timeout = "$RING_TIMEOUT"
EOF
            ;;
    esac
}
for d in $DAEMONS; do write_config "$d"; done

TARIFF_NOTE="every account rated by \`rate_per_min = \"0.0100\"\`"
if [ "$TARIFF" = 1 ]; then
    # Tariff "bench": 1000 prefixes of 2 to 6 digits (all two-digit ones, 49 + two digits,
    # then pseudo-random longer ones), so the dialled 4930123456 matches 49, 4930 and 493012.
    python3 - "$WORK/tariff.csv" "$NUMBER" <<'EOF'
import random, sys
path, number = sys.argv[1], sys.argv[2]
rnd = random.Random(11)
prefixes = [str(p) for p in range(10, 100)] + [f"49{p:02d}" for p in range(100)] + [number[:6]]
seen = set(prefixes)
while len(prefixes) < 1000:
    p = str(rnd.randrange(1, 10)) + "".join(str(rnd.randrange(10)) for _ in range(rnd.randrange(2, 6)))
    if p not in seen:
        seen.add(p)
        prefixes.append(p)
with open(path, "w") as f:
    f.write("prefix,rate,connect_fee,increments\n")
    for i, p in enumerate(prefixes):
        f.write(f"{p},0.{(i % 90) + 10:02d}00,0.0{i % 10},{'60/6' if i % 2 else '1/1'}\n")
EOF
    "$BIN" accounts import "$WORK/tariff.csv" --tariff bench --config "$WORK/off.toml" >"$WORK/tariff-import.out"
    echo "tariff: $(head -1 "$WORK/tariff-import.out")" >&2
    TARIFF_NOTE="every account on tariff \`bench\` ($(($(wc -l <"$WORK/tariff.csv") - 1)) prefixes of 2-6 digits; the dialled $NUMBER matches 49, 4930 and 493012)"
fi

# Accounts: acct-0 .. acct-(N-1) for the load tool (every 10th, i % 10 == 5, has no credit and
# is refused with 402), and the SIPp trunk. Every limit is far above what the load asks for.
RATE_COL=rate_per_min
RATE_VAL=0.0100
if [ "$TARIFF" = 1 ]; then
    RATE_COL=tariff
    RATE_VAL=bench
fi
awk -v n="$ACCOUNTS" -v col="$RATE_COL" -v val="$RATE_VAL" -v trunk="$TRUNK" 'BEGIN {
    print "id,balance,debit_limit,enabled,currency,max_channels,max_cps,daily_spend_limit,spent_today," col;
    for (i = 0; i < n; i++)
        printf "acct-%d,%s,0,1,EUR,1000,1000,1000000.0000,0.0000,%s\n", i, (i % 10 == 5) ? "0.0000" : "1000000.0000", val;
    printf "%s,100000000.0000,0,1,EUR,1000000,1000000,100000000.0000,0.0000,%s\n", trunk, val;
}' >"$WORK/accounts.csv"
t0=$(date +%s.%N)
"$BIN" accounts import "$WORK/accounts.csv" --config "$WORK/off.toml" >"$WORK/import.out"
t1=$(date +%s.%N)
echo "import: $(head -1 "$WORK/import.out") in $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}') s" >&2

for d in $DAEMONS; do
    NO_COLOR=1 "$BIN" run --config "$WORK/$d.toml" >"$WORK/$d.log" 2>&1 &
    PID[$d]=$!
done
ready() { [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$1/ready")" = 200 ]; }
all_ready() {
    local d
    for d in $DAEMONS; do ready "${ADMIN[$d]}" || return 1; done
}
for _ in $(seq 300); do
    all_ready && break
    sleep 0.1
done
for d in $DAEMONS; do
    kill -0 "${PID[$d]}" 2>/dev/null || { echo "daemon $d died:" >&2; cat "$WORK/$d.log" >&2; exit 1; }
done
all_ready || { echo "the daemons are not ready" >&2; cat "$WORK"/*.log >&2; exit 1; }
# What "on" makes of the SIPp trunk's calls (the price of the dialled number, the limits).
curl -s "http://${ADMIN[on]}/accounts/$TRUNK?to=$NUMBER" >"$WORK/trunk-on.json"
echo "GET /accounts/$TRUNK?to=$NUMBER on \"on\": $(head -c 1500 "$WORK/trunk-on.json")" >&2
TCK=$(getconf CLK_TCK)

pid_of() { echo "${PID[$1]}"; }
addr_of() { echo "${ADDR[$1]}"; }
admin_of() { echo "${ADMIN[$1]}"; }
cpu_ticks() { sed 's/^.*) //' /proc/"$1"/stat | awk '{print $12 + $13}'; }
cpu_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{t += $1} END {printf "%.0f\n", t}'; }
# The decision latency histogram's sum (s) and count, from /metrics.
decisions() {
    curl -s "http://$1/metrics" | awk '
        /^creditgate_decision_latency_seconds_sum / {s = $2}
        /^creditgate_decision_latency_seconds_count / {c = $2}
        END {printf "%s %s\n", s + 0, c + 0}'
}
sock_drops() { # $1 = IP:PORT: datagrams the kernel dropped at the daemon's socket(s) so far
    local hex
    hex=$(echo "$1" | awk -F'[.:]' '{printf "%02X%02X%02X%02X:%04X", $4, $3, $2, $1, $5}')
    awk -v a="$hex" 'NR > 1 && $2 == a {d += $13} END {print d + 0}' /proc/net/udp
}
listening() { [ -n "$(ss -Hnul "src $1")" ]; }

# Before/after figures of a daemon: "ticks ns sum count drops".
probe() { echo "$(cpu_ticks "$(pid_of "$1")") $(cpu_ns "$(pid_of "$1")") $(decisions "$(admin_of "$1")") $(sock_drops "$(addr_of "$1")")"; }
# delta DAEMON "BEFORE": the record fields of the run.
delta() {
    local after
    after=$(probe "$1")
    echo "$2 $after" | awk '{printf "cpu_ticks=%d cpu_ns=%.0f decisions=%d decision_ns=%.0f daemon_sock_drops=%d",
        $6 - $1, $7 - $2, $9 - $4, ($8 - $3) * 1e9, $10 - $5}'
}

# sipp_run DAEMON RATE CALLS LABEL: one SIPp UAC/UAS pair through the daemon.
sipp_run() {
    local daemon=$1 rate=$2 calls=$3 label=$4 dir="$WORK/sipp/$4" before tmo rc=0 urc=0
    mkdir -p "$dir"
    tmo=$((calls / rate + SIPP_HOLD_MS / 1000 + 30))
    (cd "$dir" && exec timeout -k 5 $((tmo + 45)) sipp -sf "$SCEN/uas.xml" -i 127.0.0.2 -p "$SWITCH_PORT" \
        -m "$calls" -timeout "${tmo}s" -nostdin -buff_size 4194304 \
        -trace_err -error_file uas-errors.log >uas.out 2>&1) &
    UAS_PID=$!
    for _ in $(seq 100); do listening "$SWITCH_ADDR" && break; sleep 0.05; done
    before=$(probe "$daemon")
    (cd "$dir" && timeout -k 5 $((tmo + 45)) sipp "$(addr_of "$daemon")" -sf "$SCEN/uac-allowed.xml" \
        -set account "$TRUNK" -s "$NUMBER" -i 127.0.0.1 -p "$UAC_PORT" -m "$calls" -r "$rate" \
        -d "$SIPP_HOLD_MS" -timeout "${tmo}s" -nostdin -buff_size 4194304 \
        -trace_stat -stf stats.csv -fd 1 -trace_rtt -rtt_freq $((calls < 1000 ? 10 : 100)) \
        -trace_err -error_file uac-errors.log >uac.out 2>&1) || rc=$?
    wait "$UAS_PID" || urc=$?
    UAS_PID=""
    local line
    line=$(python3 - "$dir" <<'EOF'
import glob, statistics, sys
d = sys.argv[1]
rows = [l.strip().split(";") for l in open(f"{d}/stats.csv") if l.strip()]
last = dict(zip(rows[0], rows[-1]))
rtt = []
for f in glob.glob(f"{d}/*_rtt.csv"):
    for l in open(f):
        p = l.strip().split(";")
        if len(p) == 3 and p[2] == "1":
            rtt.append(float(p[1]))
rtt.sort()
pct = lambda q: rtt[min(len(rtt) - 1, round((len(rtt) - 1) * q))] if rtt else float("nan")
mean = statistics.fmean(rtt) if rtt else float("nan")
print(f"successful={last['SuccessfulCall(C)']} failed={last['FailedCall(C)']} "
      f"retransmissions={last['Retransmissions(C)']} setup_n={len(rtt)} "
      f"setup_p50_ms={pct(0.5):.0f} setup_p99_ms={pct(0.99):.0f} setup_max_ms={rtt[-1] if rtt else 0:.0f} "
      f"setup_mean_ms={mean:.2f}")
EOF
)
    line="$label: sipp_exit=$rc uas_exit=$urc $line $(delta "$daemon" "$before")"
    echo "$line"
    echo "sipp $daemon $rate $line" >>"$WORK/results.txt"
}

# load_run DAEMON RATE LABEL: one udp_load run; the CPU window ends when the "on" daemon has
# dropped the run's calls by its ring timeout.
SETTLE=$(awk -v t="$RING_TIMEOUT" 'BEGIN {sub(/s$/, "", t); print t + 2}')
load_run() {
    local daemon=$1 rate=$2 label=$3 before line
    before=$(probe "$daemon")
    line=$(timeout 120 "$LOAD" --target "$(addr_of "$daemon")" --switch "$SWITCH_ADDR" --rate "$rate" \
        --duration "$DURATION" --accounts "$ACCOUNTS" --prefix acct- --label "$label")
    sleep "$SETTLE"
    line="$line $(delta "$daemon" "$before")"
    echo "$line"
    echo "load $daemon $rate $line" >>"$WORK/results.txt"
}

tracked() { curl -s "http://${ADMIN[on]}/metrics" | awk '/^creditgate_calls_tracked / {print $2 + 0}'; }

# Warm-up and checks: 1 s of the load tool and 200 SIPp calls through each, not recorded.
: >"$WORK/results.txt"
for d in $DAEMONS; do
    w=$(load_run "$d" 1000 "warmup-$d")
    echo "$w" >&2
    echo "$w" | grep -q ' admitted=0 ' && { echo "$d admits nothing" >&2; cat "$WORK/$d.log" >&2; exit 1; }
    w=$(sipp_run "$d" 100 200 "warmup-sipp-$d")
    echo "$w" >&2
    echo "$w" | grep -q ' successful=200 failed=0 ' || {
        echo "$d: SIPp calls failed in the warm-up" >&2; cat "$WORK/$d.log" >&2
        cat "$WORK/sipp/warmup-sipp-$d"/*errors.log >&2 2>/dev/null || true; exit 1; }
done
echo "calls tracked by \"on\" after the warm-up: $(tracked)" >&2
: >"$WORK/results.txt"

rotated() { # $1 = repetition r: the daemons, starting with number (r - 1) mod count
    local r=$1 i
    # shellcheck disable=SC2086
    set -- $DAEMONS
    for i in $(seq $(((r - 1) % $#))); do set -- "${@:2}" "$1"; done
    echo "$@"
}
for rate in $SIPP_RATES; do
    for rep in $(seq "$REPS"); do
        for d in $(rotated "$rep"); do
            sipp_run "$d" "$rate" $((rate * DURATION)) "sipp-$d-$rate-r$rep" >&2
            sleep 1
        done
    done
done
for rate in $LOAD_RATES; do
    for rep in $(seq "$REPS"); do
        for d in $(rotated "$rep"); do
            load_run "$d" "$rate" "load-$d-$rate-r$rep" >&2
            sleep 1
        done
    done
done
echo "calls tracked by \"on\" at the end of the runs: $(tracked)" >&2

PERF_TOP=""
if [ "${PERF:-}" = 1 ] && [ -n "$LOAD_RATES" ] && command -v perf >/dev/null; then
    top_rate=$(echo "$LOAD_RATES" | tr ' ' '\n' | sort -n | tail -1)
    # DWARF unwinding: the release build has no frame pointers (debug = 1 gives the line tables).
    perf record --call-graph dwarf,16384 -F 499 -o "$WORK/perf.data" -p "${PID[on]}" >"$WORK/perf.out" 2>&1 &
    PERF_PID=$!
    sleep 0.5
    timeout 120 "$LOAD" --target "${ADDR[on]}" --switch "$SWITCH_ADDR" --rate "$top_rate" \
        --duration "$DURATION" --accounts "$ACCOUNTS" --prefix acct- --label "perf-on-$top_rate" >&2
    sleep "$SETTLE"
    kill -INT "$PERF_PID" 2>/dev/null || true
    wait "$PERF_PID" 2>/dev/null || true
    PERF_PID=""
    perf report -i "$WORK/perf.data" --no-children --stdio --percent-limit 0.7 -g none \
        --sort symbol 2>/dev/null | grep -v '^#' | grep -v '^$' | sed -E 's/ +- +- *$//; s/ {2,}/  /g' | head -40 >"$WORK/perf-top.txt" || true
    # Inclusive time of the live-credit frames (and of the packet path, for scale).
    perf report -i "$WORK/perf.data" --children --stdio --percent-limit 0.5 -g none \
        --sort symbol 2>/dev/null | grep -v '^#' | grep -v '^$' | sed -E 's/ +- +- *$//; s/ {2,}/  /g' \
        | grep -E 'creditgate::(live|daemon::calls|daemon::worker::serve|core::handle|core::proxy|core::admission)' \
        | head -30 >"$WORK/perf-live.txt" || true
    PERF_TOP=1
fi

METRICS=""
for d in $DAEMONS; do
    METRICS+=$(curl -s "http://${ADMIN[$d]}/metrics" | grep -E '^creditgate_(calls_ended|live_refusals|refusals|low_credit_events|calls_tracked|live_untracked|events)' \
        | grep -v ' 0$' | sed "s/^/$d: /" || true)
    METRICS+=$'\n'
done

echo
echo "### Run: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) vCPU $(lscpu | awk -F: '/Model name/ {gsub(/^ +/, "", $2); print $2; exit}'), Linux $(uname -r), load average before: $LOADAVG"
echo
echo "Command: \`TARIFF=$TARIFF scripts/bench-live.sh $ACCOUNTS $DURATION $REPS \"$SIPP_RATES\" \"$LOAD_RATES\"\`; $("$BIN" --version), $(sipp -v 2>&1 | grep -o 'SIPp v[^ ,-]*' | head -1)"
echo
echo "\"on\": \`track_calls = true\`, \`reserve = \"60s\"\`, \`credit_scaled_channels = true\`, \`low_credit_threshold = \"1.00\"\`, \`ring_timeout = \"$RING_TIMEOUT\"\`;" \
    "$TARIFF_NOTE; max_channels, max_cps and daily_spend_limit set on every account, far above the load."
[ -n "${VARIANTS:-}" ] && echo "Variants: \"track\" = \`track_calls = true\` alone; \"nolow\" = \"on\" without \`low_credit_threshold\`."
echo "SIPp: one trunk account, ${SIPP_HOLD_MS} ms hold, RATE × $DURATION calls per run. Load tool: $ACCOUNTS accounts, RATE × $DURATION INVITEs per run."
echo
python3 - "$WORK/results.txt" "$TCK" <<'EOF'
import re, statistics, sys
path, tck = sys.argv[1], int(sys.argv[2])
rows = {}
for ln in open(path):
    kind, daemon, rate, rest = ln.split(" ", 3)
    rest = re.sub(r" \| user:.*?(?= cpu_ticks=)", "", rest)
    kv = dict(re.findall(r"(\w+)=([0-9.]+|nan)", rest))
    if kind == "sipp":
        calls = int(kv["successful"])
    else:
        calls = int(kv["admitted"]) + int(kv["refused"])
    r = {
        "calls": calls,
        "cpu_ticks": int(kv["cpu_ticks"]) / tck * 1e6 / max(calls, 1),
        "cpu_ns": float(kv["cpu_ns"]) / 1e3 / max(calls, 1),
        "dec": float(kv["decision_ns"]) / 1e3 / max(int(kv["decisions"]), 1),
        "per_call": int(kv["decisions"]) / max(calls, 1),
        "drops": int(kv["daemon_sock_drops"]),
    }
    if kind == "sipp":
        r.update(failed=int(kv["failed"]), retrans=int(kv["retransmissions"]),
                 p50=float(kv["setup_p50_ms"]), p99=float(kv["setup_p99_ms"]),
                 mean=float(kv["setup_mean_ms"]))
    else:
        r.update(p50=float(kv["p50"]), p99=float(kv["p99"]), lost=int(kv["lost"]),
                 refused=int(kv["refused"]), sent=int(kv["sent"]))
    rows.setdefault((kind, int(rate)), {}).setdefault(daemon, []).append(r)
med = lambda xs: statistics.median(xs)
summary = []
print("Medians of the repetitions. CPU: the daemon's CPU time during the run / calls (SIPp: successful")
print("calls, 7 datagrams each through creditgate: INVITE, 100, 180, 200, ACK, BYE, 200; load tool:")
print("answered INVITEs), from the threads' schedstat run time (ns) and, as a cross-check, from")
print("utime+stime (10 ms ticks). Decision: the daemon's own mean time from a datagram's arrival to")
print("its decision (creditgate_decision_latency).")
print()
variants = [v for v in ("track", "nolow") if any(v in r for r in rows.values())]
for (kind, rate) in sorted(rows, key=lambda k: (k[0] != "sipp", k[1])):
    got = rows[(kind, rate)]
    off, on = got.get("off", []), got.get("on", [])
    if not off or not on:
        continue
    extra = [(v, got.get(v, [])) for v in variants]
    if kind == "sipp":
        print(f"**SIPp whole calls, {rate} calls/s** ({on[0]['calls']} successful per run)")
    else:
        print(f"**Load tool, {rate} INVITE/s** ({on[0]['sent']} per run)")
    print()
    print("| measure | off | on | on / off |" + "".join(f" {v} | {v} / off |" for v, _ in extra))
    print("|---|---|---|---|" + "---|---|" * len(extra))
    def line(name, key, fmt):
        a = med([r[key] for r in off])
        out = f"| {name} | {fmt.format(a)} |"
        for _, rs in [("on", on)] + extra:
            if not rs:
                out += " – | – |"
                continue
            b = med([r[key] for r in rs])
            out += f" {fmt.format(b)} | {b / a:.2f} |" if a else f" {fmt.format(b)} | – |"
        print(out)
        return a, med([r[key] for r in on])
    each = lambda rs, k: " / ".join(str(r[k]) for r in rs)
    def eachline(name, key):
        print(f"| {name} | {each(off, key)} | {each(on, key)} | |" + "".join(f" {each(rs, key)} | |" for _, rs in extra))
    a, b = line("CPU per call (schedstat)", "cpu_ns", "{:.1f} µs")
    line("CPU per call (ticks)", "cpu_ticks", "{:.1f} µs")
    line("datagrams decided per call", "per_call", "{:.2f}")
    line("mean decision time per datagram", "dec", "{:.2f} µs")
    if kind == "sipp":
        line("call setup p50 (SIPp, INVITE → 200)", "p50", "{:.0f} ms")
        line("call setup p99 (SIPp)", "p99", "{:.0f} ms")
        line("call setup mean (SIPp)", "mean", "{:.2f} ms")
        eachline("failed calls, each rep", "failed")
        eachline("retransmissions, each rep", "retrans")
        label = f"SIPp {rate}/s"
    else:
        line("p50 latency (kernel timestamps)", "p50", "{:.0f} µs")
        line("p99 latency (kernel timestamps)", "p99", "{:.0f} µs")
        eachline("lost, each rep", "lost")
        eachline("refused (402, no credit), each rep", "refused")
        label = f"load tool {rate}/s"
    eachline("drops at the daemon's socket, each rep", "drops")
    print()
    summary.append((label, a, b))
print("| CPU per call (schedstat medians) | off | on | on / off | target ≤ 1.25 |")
print("|---|---|---|---|---|")
for label, a, b in summary:
    print(f"| {label} | {a:.1f} µs | {b:.1f} µs | {b / a:.2f} | {'met' if b / a <= 1.25 else 'missed'} |")
EOF
echo
echo "Refusal, call and event metrics of each daemon at the end (non-zero):"
echo
echo '```'
echo "$METRICS" | grep -v '^$'
echo '```'

if [ -n "$PERF_TOP" ]; then
    echo
    echo "perf record --call-graph dwarf of \"on\" during one more load-tool run (not counted above), top self-time symbols:"
    echo
    echo '```'
    cat "$WORK/perf-top.txt"
    echo '```'
    echo
    echo "Live-credit frames, with children:"
    echo
    echo '```'
    cat "$WORK/perf-live.txt"
    echo '```'
fi
echo
echo "Raw lines:"
echo
echo '```'
sed 's/^[a-z]* [a-z]* [0-9]* //' "$WORK/results.txt"
echo '```'
