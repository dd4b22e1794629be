#!/usr/bin/env bash
# Shadow benchmarks on a release build, real processes on 127.0.0.1:
# - takeover and hand-back: SHADOW_BENCH_TRIALS (20) trials at a 2 s grace period, 250 ms
#   polls with a 500 ms timeout; from the replicas hanging (SIGSTOP) to the shadow answering a
#   Get, and from SIGCONT to the shadow refusing one; p50, p99, max.
# - mirror lag: 8 concurrent creators at a replica for SHADOW_BENCH_SECONDS (5); from a
#   Create's Success to the shadow holding the key; p50, p99, max.
#
#   bash bench/shadows.sh
#
# Prints one JSON line per benchmark. The figures are the benchmarks' (ignored) tests in
# server/tests/shadows.rs, run one at a time.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release --quiet -p shadowkeep-server --test shadows -- --ignored --nocapture --test-threads=1 bench_ 2>&1 \
  | grep -o '{"bench".*'
