#!/usr/bin/env bash
# A cache that is warm from the first packet (issue 14, §3), two measures against baselines
# measured in the same run:
#   (a) prefetch's cost upstream: a trace over PREFETCH_NAMES names with Zipf-like
#       popularity (name i asked about 1/i as often as the first), every name with a 20 s TTL
#       (n<i>.prefetch.lab.test), replayed by dnsperf at RATE queries/s for DURATION s,
#       once with `Prefetch = off` (the baseline) and once with `Prefetch = on`. Counted at
#       unbound (total.num.queries): the queries prefetch adds, in %. Goal <= 10 %. tundns's
#       CPU per answer is printed for both.
#   (b) time from start to the first cache hit after a restart: tundns answers a trace of
#       NAMES names (trace.lab.test, TTL 300), stops cleanly (writing its cache file), and
#       unbound is stopped, so that only the cache can answer. A poller in C sends one query
#       every 2 ms from before tundns starts; the time from spawning `tundns up` to the first
#       answer is the measure. Baseline: the same for a local record (`Record =`), which
#       needs no cache: how long tundns takes to answer anything. Goal <= 100 ms. The load
#       time of the file alone, from tundns's "cache loaded" log line, is printed too.
# Everything runs in throwaway namespaces (lab/lib.sh), torn down on exit.
#
# Usage: bench/dns-warm.sh   (as root, after cargo build --release -p tundns --bin tundns)
# Env:   DURATION (seconds per trace replay, default 120, 25..600), RATE (queries/s, default
#        200, 10..5000), PREFETCH_NAMES (default 1000, 10..10000), NAMES (trace names for (b), default 10000, 100..50000), ROUNDS (for
#        (b), default 3, 1..9), PARTS (default ab; b alone skips the prefetch replay)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=lib.sh
source "$ROOT/bench/lib.sh"

DURATION=${DURATION:-120}
PREFETCH_NAMES=${PREFETCH_NAMES:-1000}
RATE=${RATE:-200}
NAMES=${NAMES:-10000}
ROUNDS=${ROUNDS:-3}
((DURATION >= 25 && DURATION <= 600)) || lab_die "DURATION must be 25..600 seconds"
((PREFETCH_NAMES >= 10 && PREFETCH_NAMES <= 10000)) || lab_die "PREFETCH_NAMES must be 10..10000"
((RATE >= 10 && RATE <= 5000)) || lab_die "RATE must be 10..5000 queries/s"
((NAMES >= 100 && NAMES <= 50000)) || lab_die "NAMES must be 100..50000"
((ROUNDS >= 1 && ROUNDS <= 9)) || lab_die "ROUNDS must be 1..9"
[[ -x $TUNDNS_BIN ]] || lab_die "no tundns at $TUNDNS_BIN (cargo build --release -p tundns --bin tundns)"

lab_require_tools ip wg wireguard-go unbound unbound-control openssl dig dnsperf python3
lab_init tdw
lab_network
lab_peer_wireguard
lab_start_resolver_unbound

# ---- (a) prefetch's cost upstream ----

trace="$LAB_DIR/zipf-trace.txt"
awk -v n="$PREFETCH_NAMES" 'BEGIN { for (i = 1; i <= n; i++) for (k = 0; k < int(2 * n / i) + 1; k++) printf "n%d.prefetch.lab.test A\n", i }' |
    shuf --random-source=<(yes) >"$trace"
lab_log "(a) $(wc -l <"$trace") queries over $PREFETCH_NAMES names (TTL 20 s), at $RATE qps for $DURATION s"

declare -A UPSTREAM CPU PREFETCHED
for prefetch in off on; do
    [[ ${PARTS:-ab} == *a* ]] || break
    # No cache file: each run starts cold, not from the one before.
    LAB_DNSPROXY_EXTRA=$'CacheFile = off\nPrefetch = '"$prefetch" lab_start_resolver_tundns "$TUNDNS_BIN"
    before=$(lab_unbound_stat total.num.queries)
    bench_fixed_rate "prefetch $prefetch" "$LAB_TUNDNS_PID" "$LAB_PROXY_V4" "$trace" "$DURATION" "$RATE" -q 20
    UPSTREAM[$prefetch]=$(($(lab_unbound_stat total.num.queries) - before))
    CPU[$prefetch]=$BENCH_CPU_US
    PREFETCHED[$prefetch]=$(lab_in_c "$TUNDNS_BIN" status "$LAB_C_IF" | sed -n 's/.*[ ,]prefetched \([0-9]*\).*/\1/p')
    lab_stop "$LAB_TUNDNS_PID"
    lab_log "prefetch $prefetch: ${UPSTREAM[$prefetch]} queries reached unbound, ${PREFETCHED[$prefetch]:-?} prefetches"
done
added=$(awk -v on="${UPSTREAM[on]:-0}" -v off="${UPSTREAM[off]:-0}" 'BEGIN { if (off > 0) printf "%.1f", (on - off) * 100 / off; else print "n/a" }')

# ---- (b) start to the first cache hit ----

names="$LAB_DIR/trace.txt"
awk -v n="$NAMES" 'BEGIN { for (i = 0; i < n; i++) printf "name-%d.trace.lab.test A\n", i }' >"$names"

# first_answer NAME: starts tundns and polls it from C for NAME; sets FIRST_MS, the
# milliseconds from spawning tundns to the first NOERROR answer carrying an A record. Not
# in a subshell: tundns's pid must reach the teardown. Bounded: 10 s.
first_answer() {
    local name=$1 started answered
    timeout 15 ip netns exec "$LAB_C" python3 - "$LAB_PROXY_V4" "$name" >"$LAB_DIR/poll.txt" 2>&1 <<'PY' &
import socket, struct, sys, time
server, name = sys.argv[1], sys.argv[2]
query = struct.pack(">HHHHHH", 0x5151, 0x0100, 1, 0, 0, 0)
query += b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"
query += struct.pack(">HH", 1, 1)
deadline = time.time() + 10
while time.time() < deadline:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(0.002)
    try:
        sock.sendto(query, (server, 53))
        reply = sock.recv(4096)
        if reply[:2] == query[:2] and reply[3] & 0x0f == 0 and reply[6:8] != b"\0\0":
            print("%.6f" % time.time())
            sys.exit(0)
    except OSError:
        time.sleep(0.002)
    finally:
        sock.close()
sys.exit(1)
PY
    local poller=$!
    started=$(date +%s.%N)
    lab_start_resolver_tundns "$TUNDNS_BIN"
    wait "$poller" || lab_die "no answer for $name within 10 s: $(cat "$LAB_DIR/poll.txt" "$LAB_DIR/tundns.log")"
    answered=$(cat "$LAB_DIR/poll.txt")
    FIRST_MS=$(awk -v a="$answered" -v s="$started" 'BEGIN { printf "%.1f", (a - s) * 1000 }')
}

declare -a WARM COLD LOAD
for ((round = 1; round <= ROUNDS; round++)); do
    lab_log "(b) round $round: $NAMES names into the cache, restart with unbound stopped"
    LAB_DNSPROXY_EXTRA="Record = warm.lab.internal A 10.99.0.9" lab_start_resolver_tundns "$TUNDNS_BIN"
    timeout 300 ip netns exec "$LAB_C" dnsperf -s "$LAB_PROXY_V4" -d "$names" -n 1 -q 50 -t 2 \
        >"$LAB_DIR/dnsperf-fill.txt" 2>&1 || lab_die "filling the cache failed: $(cat "$LAB_DIR/dnsperf-fill.txt")"
    lab_stop "$LAB_TUNDNS_PID"
    ls -l "/var/lib/tundns/netns/$LAB_C/" >&2

    # Baseline: a local record, which no cache is needed for.
    LAB_DNSPROXY_EXTRA="Record = warm.lab.internal A 10.99.0.9" first_answer warm.lab.internal
    COLD+=("$FIRST_MS")
    lab_stop "$LAB_TUNDNS_PID"
    lab_stop_resolver_unbound
    LAB_DNSPROXY_EXTRA="Record = warm.lab.internal A 10.99.0.9" first_answer name-7.trace.lab.test
    WARM+=("$FIRST_MS")
    LOAD+=("$(grep 'cache loaded' "$LAB_DIR/tundns.log" | grep -o 'micros=[0-9]*' | tail -1)")
    lab_stop "$LAB_TUNDNS_PID"
    lab_start_resolver_unbound
    lab_log "round $round: first local answer ${COLD[-1]} ms, first cache hit ${WARM[-1]} ms; load ${LOAD[-1]}"
done
warm_median=$(printf '%s\n' "${WARM[@]}" | bench_median)
cold_median=$(printf '%s\n' "${COLD[@]}" | bench_median)

if [[ ${PARTS:-ab} == *a* ]]; then
    printf '\n(a) prefetch over a replayed trace (%s queries/s for %s s, %s names, TTL 20 s)\n' "$RATE" "$DURATION" "$PREFETCH_NAMES"
    printf '%-14s %18s %12s %22s\n' prefetch "queries at unbound" prefetches "tundns CPU us/answer"
    for prefetch in off on; do
        printf '%-14s %18s %12s %22s\n' "$prefetch" "${UPSTREAM[$prefetch]}" "${PREFETCHED[$prefetch]:-?}" "${CPU[$prefetch]}"
    done
    printf 'added by prefetch: %s %% (goal <= 10 %%: %s)\n' "$added" "$(bench_verdict "$added" "<=" 10)"
fi
printf '\n(b) start to first answer, ms (%d rounds, %d names in the cache file)\n' "$ROUNDS" "$NAMES"
printf 'first local answer (baseline): %s   median %s\n' "${COLD[*]}" "$cold_median"
printf 'first cache hit:               %s   median %s (goal <= 100 ms: %s)\n' "${WARM[*]}" "$warm_median" \
    "$(bench_verdict "$warm_median" "<=" 100)"
printf 'reading and loading the cache file (tundns log): %s\n' "${LOAD[*]}"
