#!/usr/bin/env bash
# creditgate load test: drive SIPp customer calls through a creditgate deployment.
#
#   load.sh --proxy 127.0.0.1:5060 --account alice --calls 1000 --rate 100
#
# Runs the customer-side scenario (uac-allowed.xml by default) with SIPp against
# creditgate, bounded by a call count (-m) and a wall-clock limit (-timeout, plus a
# hard `timeout` around SIPp), then prints the result summary. Exit status is SIPp's:
# 0 = every call succeeded, 1 = at least one call failed, anything else = SIPp could
# not finish (97 = global timeout hit, 99 = no call processed, 255 = fatal error).
#
# Loopback only by default: --proxy and --local-ip must be 127.0.0.0/8 (or ::1,
# localhost) unless --allow-remote is given, so a mistyped address never sends a
# load to another machine.
#
# The switch side is not started here: point creditgate's `upstream` at a real switch,
# or run the matching UAS on the switch address in the background with `&` (not -bg,
# which forks and leaves no PID to wait for), bounded by -m and -timeout, e.g.
#   sipp -sf uas.xml -i 127.0.0.2 -p 5080 -m 1000 -timeout 120s -nostdin >/tmp/uas.out 2>&1 &
#   uas=$!
#   load.sh --proxy 127.0.0.1:5060 --account alice --calls 1000 --rate 100
#   wait "$uas"
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() {
    cat <<'EOF'
usage: load.sh --proxy HOST:PORT [options] [-- extra sipp arguments]

  --proxy HOST:PORT   creditgate's SIP address (default 127.0.0.1:5060)
  --account NAME      caller account, sent as the From user (default alice)
  --calls N           number of calls to place, SIPp -m (default 1000)
  --rate CPS          new calls per second, SIPp -r (default 100)
  --duration MS       call hold time between ACK and BYE, SIPp -d (default 1000)
  --number NUM        called number: Request-URI/To user, SIPp -s (default service)
  --scenario NAME     allowed | refused | cancel | reinvite | longcall | PATH.xml (default allowed)
  --expect CODE       for --scenario refused: the final code each call must get (default 402)
  --local-ip IP       local address to send from, SIPp -i (default 127.0.0.1)
  --local-port PORT   local SIP port, SIPp -p (default: SIPp's choice)
  --limit N           maximum simultaneous calls, SIPp -l (default: SIPp's 3 x duration x rate)
  --timeout SECS      wall-clock limit of the run (default: calls/rate + 2 x duration + 30 s)
  --out DIR           where SIPp's screen, statistics and error logs go (default: a new /tmp dir)
  --allow-remote      allow a --proxy or --local-ip outside loopback (127.0.0.0/8, ::1)
  -h, --help          this help

Everything after `--` is passed to sipp unchanged (e.g. -- -trace_msg).
EOF
}

proxy="127.0.0.1:5060"
account="alice"
calls=1000
rate=100
duration=1000
number="service"
scenario="allowed"
expect=""
local_ip="127.0.0.1"
allow_remote=0
local_port=""
limit=""
timeout_s=""
out=""
extra=()

need() { [[ $# -ge 2 && -n "$2" ]] || { echo "load.sh: $1 needs a value" >&2; exit 2; }; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --proxy)      need "$@"; proxy="$2"; shift 2 ;;
        --account)    need "$@"; account="$2"; shift 2 ;;
        --calls)      need "$@"; calls="$2"; shift 2 ;;
        --rate)       need "$@"; rate="$2"; shift 2 ;;
        --duration)   need "$@"; duration="$2"; shift 2 ;;
        --number)     need "$@"; number="$2"; shift 2 ;;
        --scenario)   need "$@"; scenario="$2"; shift 2 ;;
        --expect)     need "$@"; expect="$2"; shift 2 ;;
        --local-ip)   need "$@"; local_ip="$2"; shift 2 ;;
        --local-port) need "$@"; local_port="$2"; shift 2 ;;
        --limit)      need "$@"; limit="$2"; shift 2 ;;
        --timeout)    need "$@"; timeout_s="$2"; shift 2 ;;
        --out)        need "$@"; out="$2"; shift 2 ;;
        --allow-remote) allow_remote=1; shift ;;
        -h|--help)    usage; exit 0 ;;
        --)           shift; extra=("$@"); break ;;
        *)            echo "load.sh: unknown option '$1'" >&2; usage >&2; exit 2 ;;
    esac
done

is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }
for pair in "calls:$calls" "rate:$rate" "duration:$duration"; do
    is_uint "${pair#*:}" || { echo "load.sh: --${pair%%:*} must be a whole number, got '${pair#*:}'" >&2; exit 2; }
done
(( calls > 0 )) || { echo "load.sh: --calls must be > 0" >&2; exit 2; }
(( rate > 0 ))  || { echo "load.sh: --rate must be > 0" >&2; exit 2; }
[[ "$proxy" =~ ^[^:]+:[0-9]+$ || "$proxy" =~ ^\[.*\]:[0-9]+$ ]] \
    || { echo "load.sh: --proxy must be HOST:PORT, got '$proxy'" >&2; exit 2; }
# Loopback: 127.0.0.0/8, ::1 or localhost. Anything else needs --allow-remote.
is_loopback() {
    local host="$1"
    [[ "$host" =~ ^127\.[0-9]+\.[0-9]+\.[0-9]+$ || "$host" == "::1" || "$host" == "localhost" ]]
}
proxy_host="${proxy%:*}"
proxy_host="${proxy_host#[}"
proxy_host="${proxy_host%]}"
if (( ! allow_remote )); then
    is_loopback "$proxy_host" \
        || { echo "load.sh: --proxy $proxy is not a loopback address; pass --allow-remote to load another machine" >&2; exit 2; }
    [[ -z "$local_ip" ]] || is_loopback "$local_ip" \
        || { echo "load.sh: --local-ip $local_ip is not a loopback address; pass --allow-remote" >&2; exit 2; }
fi
[[ -z "$limit" ]] || is_uint "$limit" || { echo "load.sh: --limit must be a whole number" >&2; exit 2; }
[[ -z "$timeout_s" ]] || is_uint "$timeout_s" || { echo "load.sh: --timeout must be whole seconds" >&2; exit 2; }

case "$scenario" in
    allowed)  sf="$here/uac-allowed.xml" ;;
    refused)  sf="$here/uac-refused.xml" ;;
    cancel)   sf="$here/uac-cancel.xml" ;;
    reinvite) sf="$here/uac-reinvite.xml" ;;
    longcall) sf="$here/uac-longcall.xml" ;;
    *)        sf="$scenario" ;;
esac
[[ -r "$sf" ]] || { echo "load.sh: scenario file '$sf' not found" >&2; exit 2; }
if [[ -n "$expect" && "$scenario" != "refused" ]]; then
    echo "load.sh: --expect only applies to --scenario refused" >&2; exit 2
fi
command -v sipp >/dev/null || { echo "load.sh: sipp is not installed (apt-get install sip-tester)" >&2; exit 2; }

# Wall-clock bound: the time to start all calls, plus two hold times (re-INVITE has two
# pauses), plus 30 s for retransmissions and the last calls to finish.
if [[ -z "$timeout_s" ]]; then
    timeout_s=$(( (calls + rate - 1) / rate + 2 * (duration + 999) / 1000 + 30 ))
fi

if [[ -z "$out" ]]; then
    out="$(mktemp -d /tmp/creditgate-load.XXXXXX)"
else
    mkdir -p "$out"
fi

args=(
    "$proxy"
    -sf "$sf"
    -set account "$account"
    -s "$number"
    -m "$calls"
    -r "$rate"
    -d "$duration"
    -timeout "${timeout_s}s"
    -nostdin
    -trace_screen -screen_file "$out/screen.log"
    -trace_err -error_file "$out/errors.log"
    -trace_stat -stf "$out/stats.csv" -fd 1
)
[[ "$scenario" == "refused" ]] && args+=(-set expect "${expect:-402}")
[[ -n "$local_ip" ]] && args+=(-i "$local_ip")
[[ -n "$local_port" ]] && args+=(-p "$local_port")
[[ -n "$limit" ]] && args+=(-l "$limit")
args+=("${extra[@]}")

echo "creditgate load: $(basename "$sf") -> $proxy  account=$account calls=$calls rate=${rate}cps" \
     "hold=${duration}ms timeout=${timeout_s}s"
echo "logs: $out"

# SIPp stops itself after -m calls. Its -timeout is graceful in SIPp 3.6.1: it stops
# placing calls but waits for the calls in progress, and an unanswered INVITE lives
# for 32 s (64 x T1). The outer `timeout` is the hard stop 45 s later (SIGTERM, then
# SIGKILL 10 s after that), so a run never outlives timeout + 55 s.
rc=0
timeout -k 10 $(( timeout_s + 45 )) sipp "${args[@]}" >"$out/sipp.out" 2>&1 || rc=$?

echo
if [[ -s "$out/screen.log" ]]; then
    # The last scenario screen (message counts) and the last statistics screen.
    awk '
        /-- Scenario Screen --/   { sec = "scen"; scen = ""; }
        /-- Statistics Screen --/ { sec = "stat"; stat = ""; }
        /-- Repartition Screen --/ || /-- Variables Screen --/ { sec = ""; }
        /Waiting for active calls|Test Terminated/ { next }
        sec == "scen" { scen = scen $0 "\n" }
        sec == "stat" { stat = stat $0 "\n" }
        END { printf "%s\n%s", scen, stat }
    ' "$out/screen.log"
else
    echo "(no SIPp screen written; SIPp output follows)"
    tail -n 20 "$out/sipp.out"
fi

ok=$(awk -F'|' '/Successful call/ { gsub(/ /, "", $3); v = $3 } END { print v + 0 }' "$out/screen.log" 2>/dev/null || echo 0)
failed=$(awk -F'|' '/Failed call/ { gsub(/ /, "", $3); v = $3 } END { print v + 0 }' "$out/screen.log" 2>/dev/null || echo 0)
echo
case "$rc" in
    0)   verdict="PASS" ;;
    1)   verdict="FAIL (some calls failed)" ;;
    97)  verdict="FAIL (global timeout of ${timeout_s}s reached)" ;;
    99)  verdict="FAIL (no call was processed)" ;;
    124|137) verdict="FAIL (SIPp did not stop in time and was killed)" ;;
    *)   verdict="FAIL (sipp exit status $rc)" ;;
esac
echo "result: $verdict - $ok successful, $failed failed of $calls calls (sipp exit $rc)"
if [[ -s "$out/errors.log" ]]; then
    echo "first errors ($out/errors.log):"
    tr '\r' '\n' <"$out/errors.log" | grep -v '^$' | head -n 5
fi
exit "$rc"
