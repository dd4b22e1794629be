#!/usr/bin/env bash
# Durable Create throughput of two server builds, measured alternately (A, B, A, B, ...)
# against one-replica servers running side by side, so that a loaded machine's drift hits
# both alike. Prints one JSON line per run, labelled.
#
#   bash bench/create_ab.sh NEW_SERVER OLD_SERVER [ROUNDS] [SECONDS]
#
# Uses target/release/examples/kmip_load (built by bench/kmip.sh).
set -euo pipefail
NEW=$(realpath "$1"); OLD=$(realpath "$2"); ROUNDS=${3:-3}; SECS=${4:-4}
cd "$(dirname "$0")/.."
LOAD=target/release/examples/kmip_load
W=$(mktemp -d)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$W"' EXIT
listening() { for _ in $(seq 1 100); do grep -q "kmip listening on" "$1" 2>/dev/null && break; sleep 0.1; done
              grep -o "kmip listening on .*" "$1" | head -1 | cut -d' ' -f4; }
"$NEW" --dev --data-dir "$W/certs" --listen 127.0.0.1:0 >"$W/dev.out" 2>&1 &
DEV=$!; listening "$W/dev.out" >/dev/null; kill $DEV; wait $DEV 2>/dev/null || true
for who in new old; do
  cat >"$W/$who.yaml" <<EOC
serverId: bench
kmip: {listen: "127.0.0.1:0"}
tls: {cert: $W/certs/server.pem, key: $W/certs/server-key.pem, clientCa: $W/certs/ca.pem}
dataDir: $W/$who
kekFile: $W/certs/kek.bin
drives: {acceptUnknown: true}
EOC
done
"$NEW" --config "$W/new.yaml" >"$W/new.out" 2>/dev/null & PIDS+=($!)
"$OLD" --config "$W/old.yaml" >"$W/old.out" 2>/dev/null & PIDS+=($!)
A_NEW=$(listening "$W/new.out"); A_OLD=$(listening "$W/old.out")
for _ in $(seq 1 "$ROUNDS"); do
  echo "new $("$LOAD" --addr "$A_NEW" --certs "$W/certs" --op create --connections 8 --seconds "$SECS")"
  echo "old $("$LOAD" --addr "$A_OLD" --certs "$W/certs" --op create --connections 8 --seconds "$SECS")"
done
