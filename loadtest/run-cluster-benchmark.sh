#!/usr/bin/env bash
# The cross-node benchmark (docs/benchmarks.md#cluster): the same fan-out measured three ways on
# this machine, each against freshly started release servers, traffic on loopback only:
#   single   one node, broker.kind = "memory": publisher and subscribers on it;
#   local    two nodes on one redis-server: publisher and subscribers on the same node
#            (every publication still travels through Redis);
#   cross    two nodes on one redis-server: publisher on node A, subscribers on node B.
#
#   loadtest/run-cluster-benchmark.sh     # CONNS=1000 RATE=200 DURATION=10s by default
#
# Needs redis-server (Debian package); starts its own on $REDIS_PORT with no persistence and
# stops everything it started on exit. Each run is bounded (warmup + DURATION + drain).
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS=${CONNS:-1000}
RATE=${RATE:-200}
DURATION=${DURATION:-10s}
REDIS_PORT=${REDIS_PORT:-18490}
A=${A:-18491}
B=${B:-18492}
OUT=${OUT:-target/bench-results/cluster-$(date +%Y%m%d-%H%M%S)}
# shellcheck source=loadtest/cluster-lib.sh
source loadtest/cluster-lib.sh

run() { # NAME SUB_PORT PUB_PORT
    target/release/tickwire-loadtest fanout --url "ws://127.0.0.1:$2/ws" \
        --publish-url "http://127.0.0.1:$3" --connections "$CONNS" --rate "$RATE" \
        --duration "$DURATION" --warmup 3s --source-ips 127.0.0.1-127.0.0.8 --quiet \
        --topic-prefix "bench.$1." --label "$1" --json > "$OUT/$1.json"
    python3 - "$OUT/$1.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
l, d = r["latency_ms"], r["deliveries"]
print(f'{r["label"]:7} deliveries/s {d["deliveries_per_s"]:>10,.0f}  shortfall {d["shortfall_in_window_pct"]:5.2f} %  '
      f'p50 {l["p50"]:7.1f} ms  p99 {l["p99"]:7.1f} ms  server CPU {r["server"]["cpu_pct"] or 0:5.0f} %  other CPU {r["other_cpu_pct"] or 0:4.0f} %')
PY
}

start_node "$A" TICKWIRE__BROKER__KIND=memory
run single "$A" "$A"
stop_all

start_redis "$REDIS_PORT" "$OUT/redis.log"
redis=(TICKWIRE__BROKER__KIND=redis TICKWIRE__BROKER__REDIS_URL=redis://127.0.0.1:$REDIS_PORT)
start_node "$A" "${redis[@]}"
start_node "$B" "${redis[@]}"
run local "$B" "$B"
run cross "$B" "$A"
echo "results in $OUT" >&2
