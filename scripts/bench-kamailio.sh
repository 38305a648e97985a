#!/usr/bin/env bash
# Side-by-side benchmark: creditgate vs Kamailio doing the same stateless admission job.
#
# Both daemons get the same N accounts acct-0 .. acct-(N-1) (every 10th, i % 10 == 5, has
# balance 0 and is refused with 402; the others have balance 10 and are forwarded to the switch
# with Via + Record-Route), identify the account by From user, run 2 workers (creditgate
# workers = 2, Kamailio children = 2), log errors/warnings only, and ask for the same UDP receive
# buffer (4 MiB, capped by net.core.rmem_max). Kamailio runs bench/kamailio/kamailio.cfg
# (htable loaded at start from a db_text table), twice: `kamailio` with the TLSF memory manager
# (-x tlsf -X tlsf, the tuned setup) on 127.0.0.3:5060 and `kamailio-qm` with the package's
# default manager (q_malloc) on 127.0.0.5:5060 (KAM_QM=0 leaves it out).
#
# For every rate, REPS repetitions, each running every daemon one after the other (the order
# rotates between repetitions), with examples/udp_load.rs as caller and switch:
#   * admission latency p50/p99 (INVITE leaving the caller → INVITE at the switch, or → 402 at
#     the caller, by the kernel's timestamps: see examples/udp_load.rs),
#     lost (no answer within 1 s after the last INVITE),
#   * the daemon's CPU time during the run (utime + stime from /proc/PID/stat, summed over all
#     Kamailio processes; creditgate is one process) per answered call,
#   * memory after the run: RSS summed over processes and PSS (shared pages split, so Kamailio's
#     shared memory segment is not counted once per process).
# Prints every raw line, then a Markdown block of medians for BENCHMARKS.md.
# Not a test: it asserts nothing beyond both daemons answering a warm-up run.
#
#   scripts/bench-kamailio.sh [ACCOUNTS] [SECONDS] [REPS] [RATES]
#   scripts/bench-kamailio.sh 100000 5 3 "2000 5000 10000 20000"     # the defaults
#   CG_BASELINE=/path/to/older/creditgate scripts/bench-kamailio.sh ...
#
# CG_BASELINE adds a fourth daemon, "creditgate-base": another creditgate binary (an older
# build, e.g. `git worktree add /tmp/base REV && cargo build --release` there) on 127.0.0.6 with
# the same configuration, so a change's cost per call is measured against its parent in one run.
#
# Loopback only (Kamailio on 127.0.0.3:5060 and 127.0.0.5:5060, creditgate on 127.0.0.4, the
# switch on 127.0.0.2);
# every loop is bounded and every process it starts is stopped on exit.
set -euo pipefail

ACCOUNTS=${1:-100000}
DURATION=${2:-5}
REPS=${3:-3}
RATES=${4:-"2000 5000 10000 20000"}
KAM_QM=${KAM_QM:-1}
cd "$(dirname "$0")/.."
ROOT=$(pwd)

command -v kamailio >/dev/null || { echo "kamailio is not installed (apt-get install -y kamailio)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 is needed" >&2; exit 1; }

cargo build --release --quiet --bin creditgate --example udp_load
BIN="$ROOT/target/release/creditgate"
LOAD="$ROOT/target/release/examples/udp_load"
KAM_CFG="$ROOT/bench/kamailio/kamailio.cfg"

WORK=$(mktemp -d /tmp/creditgate-bench-kam.XXXXXX)
KAM_PID=""
KQM_PID=""
CG_PID=""
CGB_PID=""
cleanup() {
    [ -n "$CGB_PID" ] && kill "$CGB_PID" 2>/dev/null || true
    [ -n "$KAM_PID" ] && kill "$KAM_PID" 2>/dev/null || true
    [ -n "$KQM_PID" ] && kill "$KQM_PID" 2>/dev/null || true
    [ -n "$CG_PID" ] && kill "$CG_PID" 2>/dev/null || true
    wait 2>/dev/null || true
    if [ -n "${KEEP:-}" ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

free_port() { # $1 = IP
    python3 - "$1" <<'EOF'
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 0))
print(s.getsockname()[1])
EOF
}
port_free() { # $1 = IP, $2 = port
    python3 - "$1" "$2" <<'EOF'
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    s.bind((sys.argv[1], int(sys.argv[2])))
except OSError:
    sys.exit(1)
EOF
}

KAM_ADDR=127.0.0.3:5060
KQM_ADDR=127.0.0.5:5060
port_free 127.0.0.3 5060 || { echo "127.0.0.3:5060 is in use" >&2; exit 1; }
if [ "$KAM_QM" = 1 ]; then
    port_free 127.0.0.5 5060 || { echo "127.0.0.5:5060 is in use" >&2; exit 1; }
fi
CG_ADDR=127.0.0.4:$(free_port 127.0.0.4)
CGB_ADDR=127.0.0.6:$(free_port 127.0.0.6)
SWITCH_ADDR=127.0.0.2:$(free_port 127.0.0.2)

# The same accounts for both: creditgate's accounts.toml and Kamailio's db_text table
# (key_name:key_type:value_type:key_value:expires, value_type 1 = integer).
mkdir -p "$WORK/kamdb"
awk -v n="$ACCOUNTS" -v toml="$WORK/accounts.toml" -v db="$WORK/kamdb/balances" 'BEGIN {
    print "key_name(string) key_type(int) value_type(int) key_value(string) expires(int)" > db;
    for (i = 0; i < n; i++) {
        b = (i % 10 == 5) ? 0 : 10;
        printf "[[account]]\nid = \"acct-%d\"\nbalance = \"%d\"\ndebit_limit = \"0\"\n\n", i, b > toml;
        printf "acct-%d:0:1:%d:0\n", i, b > db;
    }
}'

cat >"$WORK/creditgate.toml" <<EOF
[sip]
listen = ["$CG_ADDR"]
upstream = ["$SWITCH_ADDR"]
workers = 2
secret = "benchmark-secret-0123456789abcdef"
# The load generator is one source far above any customer's rate: no flood guard.
source_pps_limit = 0
recv_buffer = "4MiB"

[credit]
source = "file"
file = "accounts.toml"
refresh_interval = "1h"
max_staleness = "2h"

[identify]
order = ["from_user"]

[admin]
listen = ""

[log]
level = "warn"
format = "text"
EOF

kamailio -DD -E -m 256 -M 16 -x tlsf -X tlsf -P "$WORK/kamailio.pid" -f "$KAM_CFG" \
    -A "LISTEN=udp:$KAM_ADDR" -A "DBURL=\"text://$WORK/kamdb\"" -A "SWITCH=\"sip:$SWITCH_ADDR\"" \
    >"$WORK/kamailio.log" 2>&1 &
KAM_PID=$!
DAEMONS="creditgate kamailio"
if [ "$KAM_QM" = 1 ]; then
    kamailio -DD -E -m 256 -M 16 -P "$WORK/kamailio-qm.pid" -f "$KAM_CFG" \
        -A "LISTEN=udp:$KQM_ADDR" -A "DBURL=\"text://$WORK/kamdb\"" -A "SWITCH=\"sip:$SWITCH_ADDR\"" \
        >"$WORK/kamailio-qm.log" 2>&1 &
    KQM_PID=$!
    DAEMONS="$DAEMONS kamailio-qm"
fi
NO_COLOR=1 "$BIN" run --config "$WORK/creditgate.toml" >"$WORK/creditgate.log" 2>&1 &
CG_PID=$!
if [ -n "${CG_BASELINE:-}" ]; then
    sed "s|^listen = \[\"$CG_ADDR\"\]|listen = [\"$CGB_ADDR\"]|" "$WORK/creditgate.toml" >"$WORK/creditgate-base.toml"
    NO_COLOR=1 "$CG_BASELINE" run --config "$WORK/creditgate-base.toml" >"$WORK/creditgate-base.log" 2>&1 &
    CGB_PID=$!
    DAEMONS="$DAEMONS creditgate-base"
fi

listening() { [ -n "$(ss -Hnul "src $1")" ]; }
for _ in $(seq 200); do
    listening "$KAM_ADDR" && listening "$CG_ADDR" && { [ "$KAM_QM" != 1 ] || listening "$KQM_ADDR"; } \
        && { [ -z "$CGB_PID" ] || listening "$CGB_ADDR"; } && break
    sleep 0.1
done
sleep 1
for p in "$KAM_PID" "$CG_PID" $KQM_PID $CGB_PID; do
    kill -0 "$p" 2>/dev/null || { echo "a daemon died:" >&2; cat "$WORK"/*.log >&2; exit 1; }
done

# Kamailio: the main process and its children (forked at start, fixed from then on).
KAM_PIDS="$KAM_PID $(ps -o pid= --ppid "$KAM_PID" | tr '\n' ' ')"
KQM_PIDS=""
[ -n "$KQM_PID" ] && KQM_PIDS="$KQM_PID $(ps -o pid= --ppid "$KQM_PID" | tr '\n' ' ')"
TCK=$(getconf CLK_TCK)

cpu_ticks() { # utime + stime of the given PIDs (all threads, incl. exited ones)
    local t=0 p f
    for p in "$@"; do
        f=$(sed 's/^.*) //' /proc/"$p"/stat)
        t=$((t + $(echo "$f" | awk '{print $12 + $13}')))
    done
    echo "$t"
}
mem_kb() { # $1 = VmRSS|VmHWM|Pss, then PIDs: the sum in KiB
    local k=$1 t=0 p v
    shift
    for p in "$@"; do
        if [ "$k" = Pss ]; then
            v=$(awk '$1 == "Pss:" {print $2}' /proc/"$p"/smaps_rollup)
        else
            v=$(awk -v k="$k:" '$1 == k {print $2}' /proc/"$p"/status)
        fi
        t=$((t + v))
    done
    echo "$t"
}

sock_drops() { # $1 = IP:PORT: datagrams the kernel dropped at the daemon's socket(s) so far
    local hex
    hex=$(echo "$1" | awk -F'[.:]' '{printf "%02X%02X%02X%02X:%04X", $4, $3, $2, $1, $5}')
    awk -v a="$hex" 'NR > 1 && $2 == a {d += $13} END {print d + 0}' /proc/net/udp
}

# run DAEMON RATE SECONDS LABEL: one udp_load run; prints the raw line and appends a record.
run() {
    local daemon=$1 rate=$2 secs=$3 label=$4 target pids line t0 t1 d0 d1
    case $daemon in
        kamailio) target=$KAM_ADDR; pids=$KAM_PIDS ;;
        kamailio-qm) target=$KQM_ADDR; pids=$KQM_PIDS ;;
        creditgate-base) target=$CGB_ADDR; pids=$CGB_PID ;;
        *) target=$CG_ADDR; pids=$CG_PID ;;
    esac
    # shellcheck disable=SC2086
    t0=$(cpu_ticks $pids)
    d0=$(sock_drops "$target")
    line=$(timeout 120 "$LOAD" --target "$target" --switch "$SWITCH_ADDR" --rate "$rate" \
        --duration "$secs" --accounts "$ACCOUNTS" --prefix acct- --label "$label")
    # shellcheck disable=SC2086
    t1=$(cpu_ticks $pids)
    d1=$(sock_drops "$target")
    # shellcheck disable=SC2086
    line="$line daemon_sock_drops=$((d1 - d0)) cpu_ticks=$((t1 - t0)) rss_kb=$(mem_kb VmRSS $pids) pss_kb=$(mem_kb Pss $pids)"
    echo "$line"
    echo "$daemon $rate $line" >>"$WORK/results.txt"
}

# Warm-up (and check that both answer): 1 s at 1000/s each, not recorded.
for d in $DAEMONS; do
    w=$(run "$d" 1000 1 "warmup-$d")
    echo "$w" >&2
    if echo "$w" | grep -q ' admitted=0 '; then
        echo "$d admits nothing" >&2; cat "$WORK"/*.log >&2; exit 1
    fi
done
: >"$WORK/results.txt"

# shellcheck disable=SC2086
MEM_START="creditgate RSS $(mem_kb VmRSS $CG_PID) KiB / PSS $(mem_kb Pss $CG_PID) KiB; kamailio ($(echo $KAM_PIDS | wc -w) processes) RSS $(mem_kb VmRSS $KAM_PIDS) KiB / PSS $(mem_kb Pss $KAM_PIDS) KiB"
# shellcheck disable=SC2086
[ -n "$KQM_PIDS" ] && MEM_START="$MEM_START; kamailio-qm RSS $(mem_kb VmRSS $KQM_PIDS) KiB / PSS $(mem_kb Pss $KQM_PIDS) KiB"
echo "after warm-up: $MEM_START" >&2

for rate in $RATES; do
    for rep in $(seq "$REPS"); do
        # Rotate the order: repetition r starts with daemon number (r - 1) mod count.
        # shellcheck disable=SC2086
        set -- $DAEMONS
        for _ in $(seq $(((rep - 1) % $#))); do set -- "${@:2}" "$1"; done
        for d in "$@"; do
            run "$d" "$rate" "$DURATION" "$d-$rate-r$rep" >&2
            sleep 1
        done
    done
done

# shellcheck disable=SC2086
HWM="creditgate VmHWM $(mem_kb VmHWM $CG_PID) KiB; kamailio VmHWM summed over processes $(mem_kb VmHWM $KAM_PIDS) KiB"
# shellcheck disable=SC2086
[ -n "$KQM_PIDS" ] && HWM="$HWM; kamailio-qm $(mem_kb VmHWM $KQM_PIDS) KiB"
[ -n "$CGB_PID" ] && HWM="$HWM; creditgate-base $(mem_kb VmHWM $CGB_PID) KiB"

echo
echo "### Run: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) vCPU $(lscpu | awk -F: '/Model name/ {gsub(/^ +/, "", $2); print $2; exit}'), Linux $(uname -r)"
echo
echo "Command: \`scripts/bench-kamailio.sh $ACCOUNTS $DURATION $REPS \"$RATES\"\`;" \
    "$("$BIN" --version), $(kamailio -v | head -1 | sed 's/^version: //')"
[ -n "$CGB_PID" ] && echo "creditgate-base: $CG_BASELINE"
echo
python3 - "$WORK/results.txt" "$TCK" <<'EOF'
import re, statistics, sys
path, tck = sys.argv[1], int(sys.argv[2])
rows = {}
for ln in open(path):
    daemon, rate, rest = ln.split(" ", 2)
    # udp_load's latency by the kernel's timestamps comes first; its user-space figures
    # (" | user: p50=...") would repeat the keys.
    rest = re.sub(r" \| user:.*?(?= daemon_sock_drops=)", "", rest)
    kv = dict(re.findall(r"(\w+)=([0-9.]+)", rest))
    answered = int(kv["admitted"]) + int(kv["refused"])
    rows.setdefault(int(rate), {}).setdefault(daemon, []).append({
        "p50": float(kv["p50"]), "p99": float(kv["p99"]), "lost": int(kv["lost"]),
        "drops": int(kv["daemon_sock_drops"]),
        "sent": int(kv["sent"]),
        "cpu": int(kv["cpu_ticks"]) / tck * 1e6 / max(answered, 1),
        "rss": int(kv["rss_kb"]) / 1024, "pss": int(kv["pss_kb"]) / 1024,
    })
med = lambda xs: statistics.median(xs)
print("Medians of the repetitions (latency, by the kernel's timestamps: INVITE leaving the caller → INVITE at the switch or refusal at the")
print("caller; lost: no answer within 1 s, in brackets how many of those the kernel dropped at the")
print("daemon's own socket (/proc/net/udp), the rest were dropped in the load tool's sockets or late;")
print("CPU: the daemon's utime+stime during the run / answered calls; memory after the run).")
print()
qm = any("kamailio-qm" in v for v in rows.values())
head = "| measure | creditgate | Kamailio (tlsf) | Kamailio / creditgate |"
sep = "|---|---|---|---|"
if qm:
    head += " Kamailio default (qm) | qm / creditgate |"
    sep += "---|---|"
base = any("creditgate-base" in v for v in rows.values())
if base:
    head += " creditgate-base | base / creditgate |"
    sep += "---|---|"
for rate in sorted(rows):
    c = rows[rate].get("creditgate", [])
    ks = [rows[rate].get("kamailio", [])] + ([rows[rate].get("kamailio-qm", [])] if qm else [])
    ks += [rows[rate].get("creditgate-base", [])] if base else []
    if not c or not all(ks):
        continue
    print(f"**{rate} INVITE/s** ({c[0]['sent']} per run)")
    print()
    print(head)
    print(sep)
    def line(name, key, fmt):
        a = med([r[key] for r in c])
        out = f"| {name} | {fmt.format(a)} |"
        for k in ks:
            b = med([r[key] for r in k])
            out += f" {fmt.format(b)} | {b / a:.2f} |" if a else f" {fmt.format(b)} | – |"
        print(out)
    line("p50 latency", "p50", "{:.0f} µs")
    line("p99 latency", "p99", "{:.0f} µs")
    lost = lambda rs: " / ".join(f"{r['lost']}" + (f" ({r['drops']})" if r["drops"] else "") for r in rs)
    out = f"| lost, each rep (of which at the daemon's socket) | {lost(c)} |"
    for k in ks:
        out += f" {lost(k)} | |"
    print(out)
    line("CPU per answered call", "cpu", "{:.1f} µs")
    line("RSS (sum of processes)", "rss", "{:.1f} MiB")
    line("PSS (sum of processes)", "pss", "{:.1f} MiB")
    print()
EOF
echo
echo "Memory after warm-up: $MEM_START. Peak at the end: $HWM."
echo
echo "Raw lines:"
echo
echo '```'
sed 's/^[a-z-]* [0-9]* //' "$WORK/results.txt"
echo '```'
