#!/usr/bin/env bash
# Runs tickwire's standard benchmark suite on this machine and rewrites the generated section
# of docs/benchmarks.md and docs/latency-vs-throughput.svg.
#
#   loadtest/run-benchmarks.sh            # full suite (about 10 minutes on a quiet machine)
#   REPORT_ONLY=DIR loadtest/run-benchmarks.sh   # rebuild the page from saved results in DIR
#
# Every scenario runs against a freshly started release server (feed disabled, listening on
# 127.0.0.1:$PORT only, `ulimit -n 20000`), so each starts from a clean RSS baseline. Each
# run is bounded (≤ 30 s of load, plus a hard deadline). Traffic stays on loopback.
#
# Environment:
#   PORT          server port (default 18480; away from 8080 so a dev server can keep running)
#   SOURCE_IPS    client source addresses (default 127.0.0.1-127.0.0.16)
#   PEERBENCH     peerbench binary (default /tmp/pb-target/release/peerbench; built from
#                 ../shared/tools/peerbench when missing and cargo can)
#   OUT           results directory (default target/bench-results/<timestamp>)
#   QUIET_BELOW   wait (up to 90 s) before each run until the machine is less busy than
#                 this % of all cores (default 60), so other processes disturb the numbers less
#   REPEAT        runs of each fan-out rate per tool, 1 or 2 (default 2: ours, peerbench,
#                 peerbench, ours, which cancels slow drifts in background load)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

PORT=${PORT:-18480}
ADDR=127.0.0.1:$PORT
URL=ws://$ADDR/ws
SOURCE_IPS=${SOURCE_IPS:-127.0.0.1-127.0.0.16}
PEERBENCH=${PEERBENCH:-/tmp/pb-target/release/peerbench}
PEERBENCH_SRC=${PEERBENCH_SRC:-$ROOT/../shared/tools/peerbench}
OUT=${OUT:-$ROOT/target/bench-results/$(date +%Y%m%d-%H%M%S)}
QUIET_BELOW=${QUIET_BELOW:-60}
REPEAT=${REPEAT:-2}
LT=$ROOT/target/release/tickwire-loadtest
SERVER=$ROOT/target/release/tickwire

log() { printf '\n== %s\n' "$*" >&2; }

report() {
    "$LT" report --dir "$1" --doc docs/benchmarks.md --svg docs/latency-vs-throughput.svg
}

if [[ -n ${REPORT_ONLY:-} ]]; then
    cargo build --release -p tickwire-loadtest
    report "$REPORT_ONLY"
    exit 0
fi

# Only the benchmark config applies (no TICKWIRE__* overrides from the caller's environment).
for v in $(env | grep -o '^TICKWIRE__[A-Za-z0-9_]*' || true); do unset "$v"; done
ulimit -n 20000
log "building release binaries"
cargo build --release -p tickwire -p tickwire-loadtest
if [[ ! -x $PEERBENCH && -d $PEERBENCH_SRC ]]; then
    log "building peerbench"
    (cd "$PEERBENCH_SRC" && CARGO_TARGET_DIR=$(dirname "$(dirname "$PEERBENCH")") cargo build --release -p peerbench)
fi
mkdir -p "$OUT"
echo "results: $OUT" >&2

# The benchmark configuration: defaults, except the feed (off) and the listen address.
cat > "$OUT/bench.toml" <<EOF
[server]
listen = "$ADDR"

[feed]
enabled = false

[log]
level = "warn"
EOF
{
    echo "# server (restarted before every run), with this bench.toml:"
    sed 's/^/#   /' "$OUT/bench.toml"
    echo "ulimit -n 20000; target/release/tickwire serve --config bench.toml"
    echo "# load (target/release/tickwire-loadtest; peerbench from ../shared/tools/peerbench)"
} > "$OUT/commands.txt"

json_str() { python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$1"; }
cat > "$OUT/machine.json" <<EOF
{
  "date": $(json_str "$(date -u +%Y-%m-%dT%H:%MZ)"),
  "nproc": $(json_str "$(nproc)"),
  "cpu_model": $(json_str "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"),
  "memory": $(json_str "$(free -g | awk '/^Mem:/ {print $2 " GiB"}')"),
  "kernel": $(json_str "$(uname -r)"),
  "os": $(json_str "$(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME" || uname -s)"),
  "rustc": $(json_str "$(rustc --version | cut -d' ' -f2)"),
  "commit": $(json_str "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo +dirty)")
}
EOF

SERVER_PID=
stop_server() {
    if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID"
        for _ in $(seq 150); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=
}
trap stop_server EXIT

start_server() {
    "$SERVER" serve --config "$OUT/bench.toml" > "$OUT/server-$1.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 100); do
        if curl -fsS "http://$ADDR/healthz" > /dev/null 2>&1; then return 0; fi
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "server did not come up; see $OUT/server-$1.log" >&2
    exit 1
}

# Percent of all cores busy over one second.
busy_pct() {
    local a b
    a=($(head -1 /proc/stat)); sleep 1; b=($(head -1 /proc/stat))
    local idle=$(( (b[4] + b[5]) - (a[4] + a[5]) )) total=0 i
    for i in 1 2 3 4 5 6 7 8; do total=$(( total + b[i] - a[i] )); done
    echo $(( total > 0 ? 100 * (total - idle) / total : 0 ))
}

wait_quiet() {
    local waited=0 busy
    while busy=$(busy_pct); (( busy >= QUIET_BELOW && waited < 90 )); do
        (( waited == 0 )) && echo "machine ${busy}% busy; waiting for it to settle" >&2
        waited=$((waited + 1))
    done
}

# ours NAME ARGS...: one run of tickwire-loadtest against a fresh server.
ours() {
    local name=$1; shift
    wait_quiet
    start_server "$name"
    log "$name: tickwire-loadtest $*"
    echo "tickwire-loadtest $* --url $URL --source-ips $SOURCE_IPS --label $name --json" >> "$OUT/commands.txt"
    if ! "$LT" "$@" --url "$URL" --source-ips "$SOURCE_IPS" --label "$name" --json --quiet \
        > "$OUT/$name.json" 2> "$OUT/$name.txt"; then
        echo "run $name failed:" >&2
    fi
    cat "$OUT/$name.txt" >&2
    stop_server
}

# peer NAME N R: the same fan-out scenario measured by peerbench.
peer() {
    local name=$1 n=$2 r=$3
    if [[ ! -x $PEERBENCH ]]; then
        echo "peerbench not found at $PEERBENCH; skipping $name" >&2
        return 0
    fi
    wait_quiet
    start_server "$name.peerbench"
    log "$name: peerbench -n $n -r $r"
    echo "peerbench --adapter tickwire --url $URL -n $n -r $r --warmup 3 --duration 10 --drain 3 --connect-timeout 30 --deadline 45 --source-ips $SOURCE_IPS --server-pid \$SERVER_PID --label $name --quiet" >> "$OUT/commands.txt"
    if "$PEERBENCH" --adapter tickwire --url "$URL" -n "$n" -r "$r" --warmup 3 --duration 10 --drain 3 \
        --connect-timeout 30 --deadline 45 --source-ips "$SOURCE_IPS" --server-pid "$SERVER_PID" \
        --label "$name" --quiet > "$OUT/$name.peerbench.txt" 2>&1; then
        tail -1 "$OUT/$name.peerbench.txt" > "$OUT/$name.peerbench.json"
    else
        echo "peerbench run $name failed" >&2
    fi
    head -6 "$OUT/$name.peerbench.txt" >&2
    stop_server
}

FANOUT=(--warmup 3s --duration 10s --drain 3s --payload-bytes 100 --topics 1 --subs-per-conn 1)

# Fan-out, N = 10,000, one topic: the rates the brief asks for (20, 200) plus the chart's sweep,
# each measured by both tools back to back.
for r in 20 200 5 50 100; do
    ours "fanout-n10000-r$r" fanout -n 10000 -r "$r" "${FANOUT[@]}"
    peer "fanout-n10000-r$r" 10000 "$r"
    if (( REPEAT >= 2 )); then
        peer "fanout-n10000-r$r-b" 10000 "$r"
        ours "fanout-n10000-r$r-b" fanout -n 10000 -r "$r" "${FANOUT[@]}"
    fi
done
ours fanout-n1000-r200 fanout -n 1000 -r 200 "${FANOUT[@]}"
ours idle-n10000 idle -n 10000 --duration 10s
ours connect-n10000 connect -n 10000
ours publish publish --mode both --batch-size 100 --concurrency 4 --warmup 2s --duration 8s

log "writing the report"
report "$OUT"
echo "done: docs/benchmarks.md, docs/latency-vs-throughput.svg (results in $OUT)" >&2
