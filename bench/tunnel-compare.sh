#!/usr/bin/env bash
# TCP between two network namespaces, in one run, over:
#   veth       the namespaces joined directly (no tunnel, no encryption): the ceiling
#   cpclink    `cpclink run` in each namespace: TUN, AES-GCM-256 PSP over UDP on the veth
#   boringtun  boringtun-cli (userspace WireGuard) in each namespace, keyed with `wg`
# Each is measured with iperf3 (one TCP stream, DURATION seconds), in ROUNDS rounds that
# take the paths in turn, so the machine's noise falls on all of them alike. The table
# gives each round, then the median Gbit/s per path and the median of the rounds' ratios.
# Not part of the test suite.
#
# Needs root, iproute2, iperf3, python3, wg (Debian: wireguard-tools), boringtun-cli
# (cargo install boringtun-cli) and a release build of cpclink:
#   cargo build --release -p cpclink-control
#   sudo bench/tunnel-compare.sh
# Environment: DURATION (s, default 5), ROUNDS (default 3),
# WORKERS (cpclink workers per side, default 1),
# BT_THREADS (boringtun threads, default 1), CPCLINK, BORINGTUN (paths to the binaries).
set -euo pipefail
umask 077

DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
WORKERS=${WORKERS:-1}
BT_THREADS=${BT_THREADS:-1}
CPCLINK=${CPCLINK:-$(dirname "$0")/../target/release/cpclink}
BORINGTUN=${BORINGTUN:-boringtun-cli}

for tool in ip iperf3 python3 wg "$BORINGTUN" "$CPCLINK"; do
  command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 2; }
done
[ "$(id -u)" = 0 ] || { echo "needs root (namespaces, TUN)" >&2; exit 2; }

A=tcmp-a-$$
B=tcmp-b-$$
DIR=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del "$A" 2>/dev/null || true
  ip netns del "$B" 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT

ip netns add "$A"
ip netns add "$B"
ip link add "va$$" netns "$A" type veth peer name "vb$$" netns "$B"
for ns in "$A" "$B"; do
  ip -n "$ns" link set lo up
  ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
done
ip -n "$A" addr add 10.98.0.1/24 dev "va$$"
ip -n "$B" addr add 10.98.0.2/24 dev "vb$$"
ip -n "$A" link set "va$$" up
ip -n "$B" link set "vb$$" up

ip netns exec "$B" iperf3 -s >"$DIR/iperf3-server.log" 2>&1 &
PIDS+=($!)
sleep 0.5

# One TCP stream from A to ADDR for DURATION seconds; prints Gbit/s received.
measure() {
  ip netns exec "$A" iperf3 -c "$1" -t "$DURATION" -J >"$DIR/iperf3-$2.json"
  python3 -c 'import json,sys; print("%.2f" % (json.load(open(sys.argv[1]))["end"]["sum_received"]["bits_per_second"] / 1e9))' "$DIR/iperf3-$2.json"
}

# --- cpclink: lab-mode keys, a TUN device in each namespace --------------------------
key() { python3 -c 'import os; print(os.urandom(32).hex())'; }
KA1=$(key); KA2=$(key); KB1=$(key); KB2=$(key)
cpclink_config() { # listen peer peer-prefix own1 own2 their1 their2
  cat <<EOF
[appliance]
listen = "$1:1000"
workers = $WORKERS
io = "auto"
master_keys = ["$4", "$5"]

[tun]
name = "cpc0"
path_mtu = 1500

[[peers]]
name = "peer"
endpoint = "$2:1000"
prefixes = ["$3"]
master_keys = ["$6", "$7"]
EOF
}
cpclink_config 10.98.0.1 10.98.0.2 10.200.0.2/32 "$KA1" "$KA2" "$KB1" "$KB2" >"$DIR/a.toml"
cpclink_config 10.98.0.2 10.98.0.1 10.200.0.1/32 "$KB1" "$KB2" "$KA1" "$KA2" >"$DIR/b.toml"
ip netns exec "$A" "$CPCLINK" run --config "$DIR/a.toml" >"$DIR/cpclink-a.log" 2>&1 &
PIDS+=($!)
ip netns exec "$B" "$CPCLINK" run --config "$DIR/b.toml" >"$DIR/cpclink-b.log" 2>&1 &
PIDS+=($!)
for side in a b; do
  for _ in $(seq 100); do
    grep -q "transmit SPIs" "$DIR/cpclink-$side.log" && break
    sleep 0.1
  done
  grep -q "transmit SPIs" "$DIR/cpclink-$side.log" || { cat "$DIR/cpclink-$side.log" >&2; exit 1; }
done
ip -n "$A" addr add 10.200.0.1/24 dev cpc0
ip -n "$B" addr add 10.200.0.2/24 dev cpc0

# --- boringtun: userspace WireGuard, configured over its UAPI socket -----------------
wg genkey >"$DIR/wa.key"; wg pubkey <"$DIR/wa.key" >"$DIR/wa.pub"
wg genkey >"$DIR/wb.key"; wg pubkey <"$DIR/wb.key" >"$DIR/wb.pub"
for side in a b; do
  ns=$A; [ $side = b ] && ns=$B
  ip netns exec "$ns" "$BORINGTUN" "wg$side$$" --foreground --disable-drop-privileges \
    --threads "$BT_THREADS" >"$DIR/boringtun-$side.log" 2>&1 &
  PIDS+=($!)
done
for side in a b; do
  for _ in $(seq 100); do [ -S "/var/run/wireguard/wg$side$$.sock" ] && break; sleep 0.1; done
done
ip netns exec "$A" wg set "wga$$" private-key "$DIR/wa.key" listen-port 51820 \
  peer "$(cat "$DIR/wb.pub")" endpoint 10.98.0.2:51820 allowed-ips 10.97.0.2/32
ip netns exec "$B" wg set "wgb$$" private-key "$DIR/wb.key" listen-port 51820 \
  peer "$(cat "$DIR/wa.pub")" endpoint 10.98.0.1:51820 allowed-ips 10.97.0.1/32
ip -n "$A" addr add 10.97.0.1/24 dev "wga$$"
ip -n "$B" addr add 10.97.0.2/24 dev "wgb$$"
ip -n "$A" link set "wga$$" mtu 1420 up
ip -n "$B" link set "wgb$$" mtu 1420 up

# Every path answers a ping before it is measured.
for addr in 10.98.0.2 10.200.0.2 10.97.0.2; do
  ip netns exec "$A" ping -c 3 -i 0.2 -W 2 "$addr" >/dev/null || { echo "no path to $addr" >&2; exit 1; }
done

ratio() { python3 -c "import sys; print('%.2f' % (float(sys.argv[1]) / float(sys.argv[2])) if float(sys.argv[2]) else 'n/a')" "$1" "$2"; }
median() { python3 -c "import statistics, sys; print('%.2f' % statistics.median(map(float, sys.argv[1:])))" "$@"; }

echo "TCP from namespace A to B, one iperf3 stream, ${DURATION} s per path, $ROUNDS round(s); $(date -u +%F), $(nproc) cores, kernel $(uname -r)"
echo "cpclink: $WORKERS worker(s) per side, AES-GCM-256 PSP; boringtun: $BT_THREADS thread(s) per side, $("$BORINGTUN" --version 2>/dev/null | head -1)"
echo
echo "| round | veth Gbit/s | cpclink Gbit/s | boringtun Gbit/s | cpclink/veth | cpclink/boringtun |"
echo "|---:|---:|---:|---:|---:|---:|"
VETHS=(); CPCS=(); BTS=(); R_VETH=(); R_BT=()
for round in $(seq "$ROUNDS"); do
  VETH=$(measure 10.98.0.2 veth)
  CPC=$(measure 10.200.0.2 cpclink)
  BT=$(measure 10.97.0.2 boringtun)
  VETHS+=("$VETH"); CPCS+=("$CPC"); BTS+=("$BT")
  R_VETH+=("$(ratio "$CPC" "$VETH")"); R_BT+=("$(ratio "$CPC" "$BT")")
  echo "| $round | $VETH | $CPC | $BT | ${R_VETH[-1]} | ${R_BT[-1]} |"
done
echo "| median | $(median "${VETHS[@]}") | $(median "${CPCS[@]}") | $(median "${BTS[@]}") | $(median "${R_VETH[@]}") | $(median "${R_BT[@]}") |"
