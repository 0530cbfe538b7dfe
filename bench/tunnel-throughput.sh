#!/usr/bin/env bash
# TCP throughput through userspace WireGuard, with same-run baselines (issue 11). iperf3 runs
# from C to the server in N over one of these pairs (C's end ↔ N's end):
#   tundns-tundns        tundns with its DNS proxy (so the filter has rules) ↔ tundns, proxy off
#   tundns-norules       as tundns-tundns, C's proxy off too: the filter has no rules to check
#   tundns-wggo          tundns with its DNS proxy ↔ wireguard-go
#   wggo-wggo            wireguard-go ↔ wireguard-go (Debian's)
#   boringtun-boringtun  boringtun-cli ↔ boringtun-cli (installed under target/ when missing)
#   veth                 the veth itself, no tunnel
# each with 1 and with 4 parallel streams (iperf3 -P), C sending and C receiving (iperf3 -R).
# For each run: Gbit/s (iperf3's receiver figure), the CPU-seconds both tunnel processes
# spent (utime + stime from /proc/PID/stat, before and after) per GB (10^9 bytes) iperf3 moved,
# and the whole machine's: its CPU-seconds of work per GB (tunnels, iperf3s and the kernel's work
# for them, from /proc/stat), the share of its CPUs' time that work took, and the share the
# hypervisor gave to other guests. A machine whose busy and stolen shares add up to about 100 %
# is at its ceiling: the pair's rate is then what is left of 2 cores / the machine's CPU-s per GB.
# Both ends start fresh for every run. Runs alternate, pair by pair within each mode, for ROUNDS
# rounds, the order reversed in even rounds (the shared machines are noisy); prints each run,
# the medians and the ratios against the issue's goals. Everything runs in throwaway namespaces
# (lab/lib.sh), torn down on exit.
#
# Usage: bench/tunnel-throughput.sh  (as root; tundns from $TUNDNS_BIN, default target/release/tundns)
# Env:   TUNDNS_BIN, DURATION (seconds per run, default 8, at most 60), ROUNDS (default 2, at
#        most 9), PAIRS (a subset of the pairs above, space-separated; default all), STREAMS
#        (default "1 4"), DIRECTIONS ("send" from C and/or "receive" in C; default both),
#        BORINGTUN_BIN (default: on PATH, else target/bench-tools/bin/boringtun-cli, which the
#        script installs with `cargo install boringtun-cli --locked` when a pair needs it)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=lib.sh
source "$ROOT/bench/lib.sh"

ALL_PAIRS="tundns-tundns tundns-norules tundns-wggo wggo-wggo boringtun-boringtun veth"
DURATION=${DURATION:-8}
ROUNDS=${ROUNDS:-2}
read -ra pairs <<<"${PAIRS:-$ALL_PAIRS}"
read -ra streams <<<"${STREAMS:-1 4}"
read -ra directions <<<"${DIRECTIONS:-send receive}"
((DURATION >= 1 && DURATION <= 60)) || lab_die "DURATION must be 1..60 seconds"
((ROUNDS >= 1 && ROUNDS <= 9)) || lab_die "ROUNDS must be 1..9"
for pair in "${pairs[@]}"; do
    [[ " $ALL_PAIRS " == *" $pair "* ]] || lab_die "unknown pair $pair (pairs: $ALL_PAIRS)"
done
for count in "${streams[@]}"; do
    [[ $count =~ ^[1-8]$ ]] || lab_die "STREAMS must list counts of 1..8"
done
for direction in "${directions[@]}"; do
    [[ $direction == send || $direction == receive ]] || lab_die "DIRECTIONS must list send and/or receive"
done

lab_require_tools ip wg wireguard-go unbound dig iperf3 ping jq
if [[ " ${pairs[*]} " == *" boringtun-boringtun "* ]]; then
    BORINGTUN_BIN=${BORINGTUN_BIN:-$(command -v boringtun-cli || echo "$ROOT/target/bench-tools/bin/boringtun-cli")}
    if [[ ! -x $BORINGTUN_BIN ]]; then
        lab_log "installing boringtun-cli under target/bench-tools (a few minutes, once)"
        timeout 1200 cargo install boringtun-cli --locked --root "$ROOT/target/bench-tools" >&2 ||
            lab_die "cargo install boringtun-cli failed"
        BORINGTUN_BIN=$ROOT/target/bench-tools/bin/boringtun-cli
    fi
fi

lab_init tdi
lab_network
lab_keypair peer
lab_keypair client
# N's unbound is the upstream of C's DNS proxy, idle during the runs.
lab_start_unbound "$LAB_N" "$LAB_UNBOUND_V4"
lab_spawn "$LAB_N" iperf3-server iperf3 -s
lab_wait 10 ip netns exec "$LAB_C" iperf3 -c 192.0.2.1 -t 1 ||
    lab_die "the iperf3 server in N does not answer: $(cat "$LAB_DIR/iperf3-server.log")"

# start_uapi_end SIDE LOGNAME IFACE CMD...: a UAPI WireGuard (wireguard-go, boringtun) as SIDE
# (c or n) of the tunnel, with the keys, addresses and peer the lab gives that side.
start_uapi_end() {
    local side=$1 log=$2 iface=$3
    shift 3
    if [[ $side == n ]]; then
        lab_start_uapi_wireguard "$log" "$LAB_N" "$iface" peer 10.99.0.1/24 fd99::1/64 "$LAB_WG_PORT" "$@"
        lab_wg_peer "$LAB_N" "$iface" client 10.99.0.2/32,fd99::2/128
    else
        lab_start_uapi_wireguard "$log" "$LAB_C" "$iface" client 10.99.0.2/24 fd99::2/64 "" "$@"
        lab_wg_peer "$LAB_C" "$iface" peer 10.99.0.0/24,fd99::/64 "192.0.2.1:$LAB_WG_PORT"
    fi
}

# start_end IMPL SIDE: one end of the tunnel; its pid joins end_pids.
start_end() {
    local impl=$1 side=$2
    case $impl-$side in
        tundns-c) lab_start_tundns "$TUNDNS_BIN" ;;
        norules-c) LAB_DNSPROXY=off lab_start_tundns "$TUNDNS_BIN" ;;
        tundns-n) bench_start_tundns_peer ;;
        wggo-*)
            start_uapi_end "$side" "wireguard-go-$side" "${LAB_ID}${side}g" \
                env WG_PROCESS_FOREGROUND=1 wireguard-go -f "${LAB_ID}${side}g"
            ;;
        boringtun-*)
            start_uapi_end "$side" "boringtun-$side" "${LAB_ID}${side}b" \
                env WG_SUDO=1 "$BORINGTUN_BIN" --foreground --disable-drop-privileges \
                --log "$LAB_DIR/boringtun-$side.out" "${LAB_ID}${side}b"
            ;;
    esac
    end_pids+=("$LAB_LAST_PID")
}

# measure PAIR STREAMS DIRECTION: one iperf3 run over PAIR, both ends fresh; appends Gbit/s and
# CPU-seconds per GB to the runs of PAIR in that mode (no CPU for the veth: no tunnel).
measure() {
    local pair=$1 count=$2 direction=$3 target=$LAB_PEER_TUNNEL_V4 report before after pid
    local key="$1/$2 $3" reverse=() bytes bits rate cpu_per_gb=- machine_before machine_after
    [[ $direction == receive ]] && reverse=(-R)
    end_pids=()
    case $pair in
        veth) target=192.0.2.1 ;;
        tundns-norules) start_end tundns n && start_end norules c ;;
        *) start_end "${pair#*-}" n && start_end "${pair%-*}" c ;;
    esac
    # wireguard-go and boringtun are up once `wg` configured them; wait for the handshake.
    lab_wait 10 ip netns exec "$LAB_C" ping -n -c 1 -W 1 "$target" || lab_die "no ping over $pair to $target"
    report="$LAB_DIR/iperf3-$pair-$count-$direction.json"
    before=$(bench_cpu_ticks "${end_pids[@]}")
    machine_before=$(bench_machine_ticks)
    timeout $((DURATION + 20)) ip netns exec "$LAB_C" \
        iperf3 -c "$target" -t "$DURATION" -P "$count" "${reverse[@]}" -J >"$report" 2>&1 ||
        lab_die "iperf3 over $pair ($count $direction) failed: $(cat "$report")"
    after=$(bench_cpu_ticks "${end_pids[@]}")
    machine_after=$(bench_machine_ticks)
    for pid in "${end_pids[@]}"; do lab_stop "$pid"; done
    read -r bytes bits < <(jq -r '.end.sum_received | "\(.bytes) \(.bits_per_second)"' "$report")
    ((bytes > 0)) || lab_die "iperf3 moved nothing over $pair ($count $direction): $(cat "$report")"
    rate=$(awk -v b="$bits" 'BEGIN { printf "%.3f", b / 1e9 }')
    gbits[$key]+="$rate "
    read -r machine_cpu machine_busy machine_steal < <(awk -v before="$machine_before" -v after="$machine_after" \
        -v hz="$BENCH_TICKS_PER_SECOND" -v bytes="$bytes" 'BEGIN {
            split(before, b0, " "); split(after, b1, " "); total = b1[3] - b0[3]
            printf "%.2f %.0f %.0f\n", (b1[1] - b0[1]) / hz / (bytes / 1e9),
                100 * (b1[1] - b0[1]) / total, 100 * (b1[2] - b0[2]) / total }')
    machine[$key]+="$machine_cpu "
    busy[$key]+="$machine_busy "
    steal[$key]+="$machine_steal "
    if ((${#end_pids[@]})); then
        cpu_per_gb=$(awk -v t=$((after - before)) -v hz="$BENCH_TICKS_PER_SECOND" -v b="$bytes" \
            'BEGIN { printf "%.2f", t / hz / (b / 1e9) }')
        cpu[$key]+="$cpu_per_gb "
    fi
    printf '  %-20s %-10s %8.2f Gbit/s %8s CPU-s/GB   machine: %s CPU-s/GB, %s %% busy, %s %% stolen\n' \
        "$pair" "$count $direction" "$rate" "$cpu_per_gb" "$machine_cpu" "$machine_busy" "$machine_steal" >&2
}

declare -A gbits cpu machine busy steal
modes=()
for count in "${streams[@]}"; do
    for direction in "${directions[@]}"; do modes+=("$count $direction"); done
done
load_start=$(bench_load)
lab_log "tundns: $TUNDNS_BIN; $ROUNDS rounds of ${#pairs[@]} pairs × ${#modes[@]} modes, $DURATION s each"
for ((round = 1; round <= ROUNDS; round++)); do
    lab_log "round $round (load $(bench_load))"
    for mode in "${modes[@]}"; do
        mapfile -t order < <(bench_round_order "$round" "${pairs[@]}")
        for pair in "${order[@]}"; do
            # shellcheck disable=SC2086 # mode is "STREAMS DIRECTION"
            measure "$pair" $mode
        done
    done
done
load_end=$(bench_load)

median() { printf '%s\n' $1 | bench_median; }
printf '\nmedian of %d rounds, %d s each (streams, direction from C):\n' "$ROUNDS" "$DURATION"
printf '%-20s %-10s %8s %9s %9s %6s %7s   %s\n' pair mode Gbit/s CPU-s/GB "machine¹" "busy²" "stolen³" \
    "(runs: Gbit/s; CPU-s/GB)"
for mode in "${modes[@]}"; do
    for pair in "${pairs[@]}"; do
        key="$pair/$mode" cpu_median=- cpu_runs=-
        if [[ -n ${cpu[$key]:-} ]]; then
            cpu_median=$(median "${cpu[$key]}")
            cpu_runs=${cpu[$key]% }
        fi
        printf '%-20s %-10s %8.2f %9s %9s %6s %7s   (%s; %s)\n' "$pair" "$mode" "$(median "${gbits[$key]}")" \
            "$cpu_median" "$(median "${machine[$key]}")" "$(median "${busy[$key]}")" "$(median "${steal[$key]}")" \
            "${gbits[$key]% }" "$cpu_runs"
    done
done
printf '%s\n' "¹ CPU-seconds of work on the whole machine per GB; ² % of both CPUs' time spent on that work;" \
    "³ % taken by the hypervisor for other guests (time this machine could not use)"
# The cipher's own floor: OpenSSL's ChaCha20-Poly1305 on hot 1420-byte buffers, one core.
if command -v openssl >/dev/null; then
    cipher_kbps=$(openssl speed -evp chacha20-poly1305 -bytes 1420 -seconds 2 2>/dev/null |
        awk '/^ChaCha20-Poly1305/ { sub(/k$/, "", $2); print $2 }')
    [[ -z $cipher_kbps ]] || awk -v k="$cipher_kbps" 'BEGIN { printf "cipher floor: ChaCha20-Poly1305 at %.2f GB/s per core (openssl speed, 1420 B), %.2f CPU-s/GB to seal and open\n", k / 1e6, 2 / (k / 1e6) }'
fi

# goal MODE KIND A B OP GOAL WHAT: one line with the ratio of A's median to B's in MODE (KIND is
# gbits or cpu) against the goal, when both pairs were measured.
goal() {
    local mode=$1 pair=$3 baseline=$4 op=$5 target=$6 what=$7 value
    local -n runs=$2
    [[ -n ${runs[$pair/$mode]:-} && -n ${runs[$baseline/$mode]:-} ]] || return 0
    value=$(bench_ratio "$(median "${runs[$pair/$mode]}")" "$(median "${runs[$baseline/$mode]}")")
    printf '%-10s %-40s %5s  (goal %s %s: %s)\n' "$mode" "$what" "$value" "$op" "$target" \
        "$(bench_verdict "$value" "$op" "$target")"
}
printf '\nratios of medians (goals from issue 11):\n'
for mode in "${modes[@]}"; do
    goal "$mode" gbits tundns-tundns wggo-wggo '>=' 3 "throughput tundns-tundns / wggo-wggo"
    goal "$mode" cpu tundns-tundns wggo-wggo '<=' 0.33 "CPU per GB tundns-tundns / wggo-wggo"
    goal "$mode" gbits tundns-tundns veth '>=' 0.15 "throughput tundns-tundns / veth"
    goal "$mode" gbits tundns-tundns tundns-norules '>=' 0.99 "throughput rules / no rules"
done
printf 'load average (1 min) at the start %s, at the end %s (2 cores)\n' "$load_start" "$load_end"
