#!/usr/bin/env bash
# KMIP benchmark: our server against PyKMIP's reference server, same machine, same TLS
# certificates, same load generator, in one run.
#
#   bash bench/kmip.sh [SECONDS]
#   BASELINE_SERVER=path/to/older/shadowkeep-server bash bench/kmip.sh [SECONDS]
#
# With BASELINE_SERVER, the one-replica measurements are also run against that binary (an
# earlier build), right after ours and with the same load, and the ratios printed: a
# regression check within one run on one machine.
#
# Prints one JSON line per measurement and a summary with the Get throughput ratio. Needs
# PyKMIP in .venv (`.ci/run` makes it, or: python3 -m venv .venv && .venv/bin/pip install
# pykmip==0.11.0). Everything runs on 127.0.0.1 and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-5}

cargo build --release --quiet -p shadowkeep-server --bin shadowkeep-server --example kmip_load --example tls_echo
TARGET=${CARGO_TARGET_DIR:-target}
SERVER=$TARGET/release/shadowkeep-server
LOAD=$TARGET/release/examples/kmip_load
ECHO=$TARGET/release/examples/tls_echo
PYKMIP=.venv/bin/pykmip-server
[ -x "$PYKMIP" ] || { echo "bench/kmip.sh: $PYKMIP missing; see the header of this script" >&2; exit 2; }

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# Starts a server command in the background; sets ADDR to its KMIP address once it listens.
start() {
  local log=$1; shift
  "$@" >"$log.out" 2>"$log.err" &
  PIDS+=($!)
  for _ in $(seq 1 100); do
    if grep -q "kmip listening on" "$log.out" 2>/dev/null; then
      ADDR=$(grep -o "kmip listening on .*" "$log.out" | head -1 | cut -d' ' -f4)
      return
    fi
    sleep 0.1
  done
  echo "server did not start: $(cat "$log.err")" >&2
  exit 1
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

load() { "$LOAD" --certs "$WORK/certs" --seconds "$SECONDS_PER_RUN" "$@"; }

# Certificates, KEK: made once by development mode, shared by every server below.
start "$WORK/dev" "$SERVER" --dev --data-dir "$WORK/certs" --listen 127.0.0.1:0
kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true

config() { # name, extra yaml
  cat >"$WORK/$1.yaml" <<EOF
serverId: bench
kmip: {listen: "127.0.0.1:0"}
tls: {cert: $WORK/certs/server.pem, key: $WORK/certs/server-key.pem, clientCa: $WORK/certs/ca.pem}
dataDir: $WORK/$1
kekFile: $WORK/certs/kek.bin
drives: {acceptUnknown: true}
$2
EOF
  echo "$WORK/$1.yaml"
}

echo "== shadowkeep-server, one replica"
start "$WORK/solo" "$SERVER" --config "$(config solo "")"
OURS_GET1=$(load --addr "$ADDR" --op get --connections 1); echo "$OURS_GET1"
OURS_GET8=$(load --addr "$ADDR" --op get --connections 8); echo "$OURS_GET8"
OURS_CREATE_SOLO=$(load --addr "$ADDR" --op create --connections 8); echo "$OURS_CREATE_SOLO"

echo "== the ceiling: a bare rustls server answering every request with a captured Get response"
start "$WORK/echo" "$ECHO" --certs "$WORK/certs" --capture "$ADDR"
kill "${PIDS[-2]}"
ECHO_GET1=$(load --addr "$ADDR" --op get --connections 1); echo "$ECHO_GET1"
ECHO_GET8=$(load --addr "$ADDR" --op get --connections 8); echo "$ECHO_GET8"
kill "${PIDS[-1]}"

BASE_GET1='null'; BASE_GET8='null'; BASE_CREATE='null'
if [ -n "${BASELINE_SERVER:-}" ]; then
  echo "== baseline $BASELINE_SERVER, one replica"
  start "$WORK/base" "$BASELINE_SERVER" --config "$(config base "")"
  BASE_GET1=$(load --addr "$ADDR" --op get --connections 1); echo "$BASE_GET1"
  BASE_GET8=$(load --addr "$ADDR" --op get --connections 8); echo "$BASE_GET8"
  BASE_CREATE=$(load --addr "$ADDR" --op create --connections 8); echo "$BASE_CREATE"
  kill "${PIDS[-1]}"
fi

echo "== shadowkeep-server, two replicas, Create acknowledged by one peer"
P1=$(free_port); P2=$(free_port)
repl() { # self-port, peer-port
  cat <<EOF
replication:
  listen: "127.0.0.1:$1"
  clientCert: $WORK/certs/peer.pem
  clientKey: $WORK/certs/peer-key.pem
  allowedIdentities: [shadowkeep-dev-peer]
  peerAcknowledgements: 1
  peers: [{name: other, address: "127.0.0.1:$2"}]
EOF
}
start "$WORK/ra" "$SERVER" --config "$(config ra "$(repl "$P1" "$P2")")"
ADDR_A=$ADDR
start "$WORK/rb" "$SERVER" --config "$(config rb "$(repl "$P2" "$P1")")"
OURS_CREATE_ACK1=$(load --addr "$ADDR_A" --op create --connections 8); echo "$OURS_CREATE_ACK1"

echo "== pykmip-server (PyKMIP 0.11), same certificates"
mkdir -p "$WORK/policies"
PYPORT=$(free_port)
cat >"$WORK/pykmip.conf" <<EOF
[server]
hostname=127.0.0.1
port=$PYPORT
certificate_path=$WORK/certs/server.pem
key_path=$WORK/certs/server-key.pem
ca_path=$WORK/certs/ca.pem
auth_suite=TLS1.2
policy_path=$WORK/policies
enable_tls_client_auth=True
database_path=$WORK/pykmip.db
logging_level=WARNING
EOF
"$PYKMIP" -f "$WORK/pykmip.conf" -l "$WORK/pykmip.log" >"$WORK/pykmip.out" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do
  python3 -c "import socket; socket.create_connection(('127.0.0.1',$PYPORT),1)" 2>/dev/null && break
  sleep 0.2
done
THEIRS_GET1=$(load --addr "127.0.0.1:$PYPORT" --op get --connections 1); echo "$THEIRS_GET1"
THEIRS_GET8=$(load --addr "127.0.0.1:$PYPORT" --op get --connections 8); echo "$THEIRS_GET8"

python3 - "$OURS_GET1" "$OURS_GET8" "$OURS_CREATE_SOLO" "$OURS_CREATE_ACK1" "$THEIRS_GET1" "$THEIRS_GET8" \
  "$BASE_GET1" "$BASE_GET8" "$BASE_CREATE" "$ECHO_GET1" "$ECHO_GET8" <<'EOF'
import json, sys
(ours1, ours8, create_solo, create_ack, theirs1, theirs8,
 base1, base8, base_create, echo1, echo8) = (json.loads(a) for a in sys.argv[1:])
print()
print(f"{'measurement':44} {'ops/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
for name, r in [("shadowkeep Get, 1 connection", ours1), ("shadowkeep Get, 8 connections", ours8),
                ("shadowkeep Create, 8 conns, no peers", create_solo),
                ("shadowkeep Create, 8 conns, 1 peer ack", create_ack),
                ("pykmip-server Get, 1 connection", theirs1), ("pykmip-server Get, 8 connections", theirs8),
                ("rustls echo ceiling, 1 connection", echo1), ("rustls echo ceiling, 8 connections", echo8)]:
    print(f"{name:44} {r['ops_per_sec']:>10.1f} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f}")
r1 = ours1["ops_per_sec"] / max(theirs1["ops_per_sec"], 1e-9)
r8 = ours8["ops_per_sec"] / max(theirs8["ops_per_sec"], 1e-9)
print()
print(f"Get throughput ratio shadowkeep/pykmip: {r1:.0f}x at 1 connection, {r8:.0f}x at 8 connections (target >= 100x)")
print(f"p99 Get at 8 connections: {ours8['p99_ms']:.3f} ms (target < 2 ms)")
print(f"Get throughput as a share of the rustls echo ceiling: {100 * ours1['ops_per_sec'] / max(echo1['ops_per_sec'], 1e-9):.0f}% at 1 connection, "
      f"{100 * ours8['ops_per_sec'] / max(echo8['ops_per_sec'], 1e-9):.0f}% at 8 connections")
print(f"durable Create with one peer acknowledgement: {create_ack['ops_per_sec']:.0f}/s (target >= 1000/s)")
if base1 is not None:
    print()
    print("against the baseline build (same run, one replica):")
    for name, ours, base in [("Get, 1 connection", ours1, base1), ("Get, 8 connections", ours8, base8),
                             ("Create, 8 connections", create_solo, base_create)]:
        print(f"  {name:24} {ours['ops_per_sec']:>10.1f} vs {base['ops_per_sec']:>10.1f} ops/s"
              f" ({ours['ops_per_sec'] / max(base['ops_per_sec'], 1e-9):.2f}x),"
              f" p99 {ours['p99_ms']:.3f} vs {base['p99_ms']:.3f} ms")
failures = sum(r["failures"] for r in (ours1, ours8, create_solo, create_ack))
print(f"failed requests against shadowkeep: {failures}")
EOF
