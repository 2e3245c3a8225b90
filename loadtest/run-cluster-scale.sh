#!/usr/bin/env bash
# Where the cluster's ceiling is on one machine (issue 21, docs/benchmarks.md#cluster): 1, 2 and 4
# tickwire nodes on one redis-server (or a Redis Cluster), one topic, CONNS subscribers spread
# evenly over the nodes (`--subscribe-urls`), one HTTP publisher on node A at each rate of RATES
# msg/s. Per run: deliveries/s, loss, p50/p99, CPU of the tickwire nodes (together) and of Redis
# from /proc over the run, Redis commands and network bytes per publication from INFO. Then the
# publish ingest through the broker: one `tickwire-loadtest publish` per node at once (single
# messages, then batches of 100, over 100 topics, each mode its own phase), their msg/s summed,
# with the CPU of the nodes and of Redis over the phase. Traffic on loopback only.
#
#   loadtest/run-cluster-scale.sh    # NODES="1 2 4" CONNS=10000 RATES="20 100 200" DURATION=10s
#   REDIS=cluster loadtest/run-cluster-scale.sh   # the same on a 3-shard Redis Cluster
#
# Needs redis-server; starts its own on $REDIS_PORT (no persistence), or with REDIS=cluster a
# Redis Cluster of $SHARDS primaries without replicas on $REDIS_PORT and up
# (broker.kind = "redis-cluster"; CPU, commands and bytes are summed over the shards), and stops
# everything it started on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
NODES=${NODES:-"1 2 4"}
CONNS=${CONNS:-10000}
RATES=${RATES:-${RATE:-"20 100 200"}}
INGEST=${INGEST:-1}
DURATION=${DURATION:-10s}
REDIS=${REDIS:-single}
SHARDS=${SHARDS:-3}
REDIS_PORT=${REDIS_PORT:-18580}
BASE=${BASE:-18591}
OUT=${OUT:-target/bench-results/cluster-scale-$(date +%Y%m%d-%H%M%S)}
# shellcheck source=loadtest/cluster-lib.sh
source loadtest/cluster-lib.sh

cpu() { # PID...: utime+stime of the processes, in clock ticks
    local t=0
    for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
    echo "$t"
}
ports=("$REDIS_PORT")
[ "$REDIS" = cluster ] && ports=($(seq "$REDIS_PORT" $((REDIS_PORT + SHARDS - 1))))
info() { for p in "${ports[@]}"; do redis-cli -p "$p" info "$1" | tr -d '\r'; done; }
sum() { awk -F: -v k="$1" '$1 == k {t += $2} END {print t + 0}'; }

for n in $NODES; do
    redis=()
    for p in "${ports[@]}"; do
        extra=()
        [ "$REDIS" = cluster ] && extra=(--cluster-enabled yes --cluster-config-file "nodes-$n-$p.conf" --dir "$OUT")
        start_redis "$p" "$OUT/redis-$n-$p.log" "${extra[@]}"
        redis+=("$started")
    done
    broker=(TICKWIRE__BROKER__KIND=redis TICKWIRE__BROKER__REDIS_URL=redis://127.0.0.1:$REDIS_PORT)
    if [ "$REDIS" = cluster ]; then
        redis-cli --cluster create $(printf '127.0.0.1:%s ' "${ports[@]}") --cluster-replicas 0 --cluster-yes > "$OUT/create-$n.log"
        for _ in $(seq 100); do redis-cli -p "$REDIS_PORT" cluster info | grep -q cluster_state:ok && break; sleep 0.1; done
        broker=(TICKWIRE__BROKER__KIND=redis-cluster
            TICKWIRE__BROKER__REDIS_CLUSTER_URLS=$(printf 'redis://127.0.0.1:%s,' "${ports[@]}" | sed 's/,$//'))
    fi
    nodes=()
    urls=()
    for i in $(seq 0 $((n - 1))); do
        port=$((BASE + i))
        start_node "$port" "${broker[@]}"
        nodes+=("$started")
        urls+=("ws://127.0.0.1:$port/ws")
    done
    list=$(IFS=,; echo "${urls[*]}")
    for rate in $RATES; do
        info commandstats > "$OUT/commands-$n-$rate.before"
        in0=$(info stats | sum total_net_input_bytes)
        out0=$(info stats | sum total_net_output_bytes)
        t0=$(cpu "${nodes[@]}"); r0=$(cpu "${redis[@]}"); s0=$(date +%s.%N)
        target/release/tickwire-loadtest fanout --url "ws://127.0.0.1:$BASE/ws" --subscribe-urls "$list" \
            --connections "$CONNS" --rate "$rate" --duration "$DURATION" --warmup 3s \
            --source-ips 127.0.0.1-127.0.0.32 --quiet --topic-prefix "bench.scale$n.r$rate." --label "nodes-$n-rate-$rate" \
            --json > "$OUT/nodes-$n-rate-$rate.json"
        t1=$(cpu "${nodes[@]}"); r1=$(cpu "${redis[@]}"); s1=$(date +%s.%N)
        info commandstats > "$OUT/commands-$n-$rate.after"
        in1=$(info stats | sum total_net_input_bytes)
        out1=$(info stats | sum total_net_output_bytes)
        python3 - "$OUT/nodes-$n-rate-$rate.json" "$n" "$rate" "$((t1 - t0))" "$((r1 - r0))" "$s0" "$s1" \
            "$OUT/commands-$n-$rate" "$((in1 - in0))" "$((out1 - out0))" "$(getconf CLK_TCK)" "$REDIS" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
n, rate, tw, rd, s0, s1, commands, bin_, bout, hz, redis = sys.argv[2:]
def calls(path):
    out = {}
    for line in open(path):
        if line.startswith("cmdstat_"):
            name, rest = line[8:].split(":", 1)
            out[name] = out.get(name, 0) + int(rest.split(",")[0].split("=")[1])
    return out
before, after = calls(commands + ".before"), calls(commands + ".after")
diff = {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) > 0}
secs = float(s1) - float(s0)
pubs = max(r["publish"]["confirmed"], 1)
l, d, g = r["latency_ms"], r["deliveries"], r["gaps"]
print(f'{redis}, nodes {n}, rate {rate}: deliveries/s {d["deliveries_per_s"]:>9,.0f}  shortfall {d["shortfall_in_window_pct"]:5.2f} %  '
      f'lost {g["lost"]}  out of order {g["out_of_order"]}  p50 {l["p50"]:6.1f} ms  p99 {l["p99"]:6.1f} ms  '
      f'CPU over the run ({secs:.1f} s): tickwire {int(tw) / int(hz) / secs * 100:4.0f} %  redis {int(rd) / int(hz) / secs * 100:3.0f} %  '
      f'per publication ({pubs}): {int(bin_) / pubs:,.0f} B in, {int(bout) / pubs:,.0f} B out to Redis; '
      f'commands over the run: ' + ", ".join(f"{k} {v}" for k, v in sorted(diff.items(), key=lambda kv: -kv[1])))
PY
    done
    for mode in $([ "$INGEST" = 1 ] && echo single batch); do
        ingest=()
        t0=$(cpu "${nodes[@]}"); r0=$(cpu "${redis[@]}"); s0=$(date +%s.%N)
        for i in $(seq 0 $((n - 1))); do
            target/release/tickwire-loadtest publish --url "ws://127.0.0.1:$((BASE + i))/ws" --mode "$mode" \
                --topics 100 --topic-prefix "bench.ingest$n.$i." --concurrency 4 --duration "$DURATION" \
                --warmup 2s --quiet --json > "$OUT/ingest-$n-$mode-$i.json" 2> /dev/null &
            ingest+=($!)
        done
        wait "${ingest[@]}"
        t1=$(cpu "${nodes[@]}"); r1=$(cpu "${redis[@]}"); s1=$(date +%s.%N)
        python3 - "$n" "$mode" "$((t1 - t0))" "$((r1 - r0))" "$s0" "$s1" "$(getconf CLK_TCK)" "$REDIS" \
            "$OUT"/ingest-"$n"-"$mode"-*.json <<'PY'
import json, sys
n, mode, tw, rd, s0, s1, hz, redis = sys.argv[1:9]
secs, hz = float(s1) - float(s0), int(hz)
runs = [r for p in sys.argv[9:] for r in json.load(open(p))["runs"]]
total = sum(r["messages_per_s"] for r in runs)
errors = sum(r["errors"] for r in runs)
p99 = max(r["latency_ms"]["p99"] for r in runs)
print(f'{redis}, nodes {n}: publish ingest ({mode}, one publisher per node): {total:,.0f} msg/s, {errors} errors, '
      f'worst request p99 {p99:.1f} ms; CPU over the phase ({secs:.1f} s, warmup included): '
      f'tickwire {int(tw) / hz / secs * 100:.0f} %, redis {int(rd) / hz / secs * 100:.0f} % of one core')
PY
    done
    stop_all
done
echo "results in $OUT" >&2
