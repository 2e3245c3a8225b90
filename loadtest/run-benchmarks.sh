#!/usr/bin/env bash
# Runs tickwire's standard benchmark suite on this machine and rewrites the generated section
# of docs/benchmarks.md and docs/latency-vs-throughput.svg.
#
#   loadtest/run-benchmarks.sh            # full suite (about 15-19 minutes on a quiet machine)
#   RAWFAN=0 loadtest/run-benchmarks.sh   # without the rawfan runs (about 12-15 minutes)
#   REPORT_ONLY=DIR loadtest/run-benchmarks.sh   # rebuild the page from saved results in DIR
#   SMOKE=1 loadtest/run-benchmarks.sh    # tiny, short runs that check the script; its page
#                                         # goes to $OUT/benchmarks.md, not docs/
#
# Every scenario runs against a freshly started release server (feed disabled, listening on
# 127.0.0.1:$PORT only, `ulimit -n 20000`), so each starts from a clean RSS baseline. Each
# run is bounded (≤ 30 s of load, plus a hard deadline). Traffic stays on loopback.
#
# The issue's targets are ratios to rawfan (the thinnest fan-out server on our stack, from
# ../shared/tools/peerbench), measured in the same run with the same client (peerbench). For
# those scenarios the suite runs rawfan and tickwire in ABBA order (rawfan, tickwire,
# tickwire, rawfan), each against a fresh server, so a slow drift in background load cancels.
#
# Order (REPEAT=2; a "-b" label is the second run of a scenario):
#   N=10000, R=20 and R=200:  rawfan, ours, peerbench, peerbench-b, ours-b, rawfan-b
#   N=10000, R=5, 50, 100:    ours, peerbench, peerbench-b, ours-b
#   N=1000,  R=200:           rawfan, ours, peerbench, peerbench-b, ours-b, rawfan-b
#   idle, N=10000 (peerbench -r 0): rawfan, tickwire, tickwire-b, rawfan-b
#   idle (ours): N=10000, N=19000
#   connect N=10000, publish
#   topics N=10000 (100,000 topics, 50 subscriptions each, 5 of them patterns), its one-topic
#   fan-out baseline at the same delivery rate, then the reconnect storm N=10000 (issue 16),
#   each server's connect and reconnect in ABBA order: rawstorm, tickwire (its connect is the
#   one above), tickwire-b, rawstorm-b. rawstorm (loadtest/src/bin/rawstorm.rs) is the storm's
#   reference: the socket work of a storm and nothing else (no hub, no history, no delivery)
#   bandwidth N=10000 (issue 18): tick, book, doc, each plain, with deltas, compressed
#   (permessage-deflate) and both (tick only compressed: too small for deltas); then tick with a
#   max rate
#   idle, N=19000 (peerbench -r 0, one process): rawfan, tickwire (last: may not fit)
#
# Environment:
#   PORT          server port (default 18480; away from 8080 so a dev server can keep running)
#   RAWFAN_PORT   rawfan's port (default 19010; away from 9010, where peerbench's own scripts
#                 start rawfan). A start refuses a port something already listens on.
#   RAWFAN        1 (default) runs the rawfan part; 0 skips it (and the peerbench idle runs)
#   RAWSTORM_PORT rawstorm's port (default 19020)
#   RAWSTORM      1 (default) runs the storm's reference, rawstorm; 0 skips it
#   SOURCE_IPS    client source addresses (default 127.0.0.1-127.0.0.32: tickwire allows 1,000
#                 connections per address by default, and the idle run holds 19,000)
#   PEERBENCH     peerbench binary (default /tmp/pb-target/release/peerbench; built from
#                 ../shared/tools/peerbench when missing and cargo can)
#   RAWFAN_BIN    rawfan binary (default: next to peerbench; built with it)
#   OUT           results directory (default target/bench-results/<timestamp>)
#   QUIET_BELOW   wait (up to 90 s) before each run until the machine is less busy than
#                 this % of all cores (default 60), so other processes disturb the numbers less
#   REPEAT        runs of each fan-out rate per tool, 1 or 2 (default 2: ours, peerbench,
#                 peerbench, ours, which cancels slow drifts in background load)
#   N_BIG N_SMALL N_MAX   subscriber counts (default 10000, 1000, 19000)
#   WARMUP DURATION DRAIN IDLE_S   fan-out timeline and idle hold, seconds (default 3, 10, 3, 10)
#   SWEEP         the chart's extra N_BIG rates (default "5 50 100")
#   TOPICS_T TOPICS_K TOPICS_P TOPICS_R   the topics run: topics, subscriptions per connection,
#                 how many of them are patterns, msg/s (default 100000, 50, 5, 20000)
#   STORM_T STORM_R   the reconnect run's topics and msg/s (default 1000, 500)
#   BW_R_TICK BW_R_BOOK BW_R_DOC   the bandwidth runs' msg/s per shape (default 20, 10, 5: what
#                 a 2-core machine delivers to N_BIG subscribers with the client checking
#                 every update)
#   BW_WARMUP BW_DURATION   the bandwidth runs' warmup and window, seconds (default 2, 5)
#   BW_MAX_RATE BW_MAX_RATE_R   the max-rate run's max_rate and msg/s (default 1, 200)
#   SMOKE=1       small defaults for all of the above (N 400/100/500, 1 s + 4 s + 1 s, no
#                 sweep, no publish run, small topics and reconnect runs), results only in $OUT
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SMOKE=${SMOKE:-0}
if [[ $SMOKE == 1 ]]; then
    : "${N_BIG:=400}" "${N_SMALL:=100}" "${N_MAX:=500}" "${WARMUP:=1}" "${DURATION:=4}" \
        "${DRAIN:=1}" "${IDLE_S:=4}" "${SWEEP:=}" "${TOPICS_T:=2000}" "${TOPICS_K:=10}" \
        "${TOPICS_R:=500}" "${STORM_T:=100}" "${STORM_R:=100}"
fi
BW_R_TICK=${BW_R_TICK:-20}
BW_R_BOOK=${BW_R_BOOK:-10}
BW_R_DOC=${BW_R_DOC:-5}
BW_WARMUP=${BW_WARMUP:-2}
BW_DURATION=${BW_DURATION:-5}
BW_MAX_RATE=${BW_MAX_RATE:-1}
BW_MAX_RATE_R=${BW_MAX_RATE_R:-200}
PORT=${PORT:-18480}
ADDR=127.0.0.1:$PORT
URL=ws://$ADDR/ws
RAWFAN=${RAWFAN:-1}
RAWFAN_PORT=${RAWFAN_PORT:-19010}
RAWFAN_ADDR=127.0.0.1:$RAWFAN_PORT
RAWFAN_URL=ws://$RAWFAN_ADDR/ws
RAWSTORM=${RAWSTORM:-1}
RAWSTORM_PORT=${RAWSTORM_PORT:-19020}
RAWSTORM_ADDR=127.0.0.1:$RAWSTORM_PORT
SOURCE_IPS=${SOURCE_IPS:-127.0.0.1-127.0.0.32}
PEERBENCH=${PEERBENCH:-/tmp/pb-target/release/peerbench}
RAWFAN_BIN=${RAWFAN_BIN:-$(dirname "$PEERBENCH")/rawfan}
PEERBENCH_SRC=${PEERBENCH_SRC:-$ROOT/../shared/tools/peerbench}
OUT=${OUT:-$ROOT/target/bench-results/$(date +%Y%m%d-%H%M%S)}
QUIET_BELOW=${QUIET_BELOW:-60}
REPEAT=${REPEAT:-2}
N_BIG=${N_BIG:-10000}
N_SMALL=${N_SMALL:-1000}
N_MAX=${N_MAX:-19000}
WARMUP=${WARMUP:-3}
DURATION=${DURATION:-10}
DRAIN=${DRAIN:-3}
IDLE_S=${IDLE_S:-10}
SWEEP=${SWEEP-5 50 100}
TOPICS_T=${TOPICS_T:-100000}
TOPICS_K=${TOPICS_K:-50}
TOPICS_P=${TOPICS_P:-5}
TOPICS_R=${TOPICS_R:-20000}
STORM_T=${STORM_T:-1000}
STORM_R=${STORM_R:-500}
LT=$ROOT/target/release/tickwire-loadtest
RAWSTORM_BIN=$ROOT/target/release/rawstorm
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

# Only the benchmark config applies (no TICKWIRE__* overrides from the caller's environment),
# and both servers get tokio's default runtime (one worker per core).
for v in $(env | grep -o '^TICKWIRE__[A-Za-z0-9_]*' || true); do unset "$v"; done
unset TOKIO_WORKER_THREADS RAWFAN_THREADS
ulimit -n 20000
log "building release binaries"
cargo build --release -p tickwire -p tickwire-loadtest
if [[ (! -x $PEERBENCH || (! -x $RAWFAN_BIN && $RAWFAN == 1)) && -d $PEERBENCH_SRC ]]; then
    log "building peerbench and rawfan"
    (cd "$PEERBENCH_SRC" && CARGO_TARGET_DIR=$(dirname "$(dirname "$PEERBENCH")") \
        cargo build --release -p peerbench -p rawfan)
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
    if [[ $RAWFAN == 1 ]]; then
        echo "# rawfan (restarted before every rawfan run; RAWFAN_THREADS and TOKIO_WORKER_THREADS unset"
        echo "# for both servers: tokio's default, one worker per core, $(nproc) here):"
        echo "ulimit -n 20000; $RAWFAN_BIN $RAWFAN_ADDR"
    fi
    echo "# load (target/release/tickwire-loadtest; peerbench and rawfan from ../shared/tools/peerbench)"
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

# stop_pid PID: SIGTERM, up to 15 s to exit, then SIGKILL.
stop_pid() {
    local pid=$1
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
}

SERVER_PID=
RAWFAN_PID=
RAWSTORM_PID=
stop_server() { stop_pid "$SERVER_PID"; SERVER_PID=; }
stop_rawfan() { stop_pid "$RAWFAN_PID"; RAWFAN_PID=; }
stop_rawstorm() { stop_pid "$RAWSTORM_PID"; RAWSTORM_PID=; }
trap 'stop_server; stop_rawfan; stop_rawstorm' EXIT

# port_free PORT: nothing listens on it. A server of someone else's on our port would answer the
# readiness check and be measured in place of ours, so every start checks first.
port_free() {
    if command -v ss > /dev/null; then
        ! ss -Hltn "sport = :$1" | grep -q .
    else
        ! (exec 3<> "/dev/tcp/127.0.0.1/$1") 2> /dev/null
    fi
}

# owns_port PID PORT: the listener on PORT is PID's (just alive, where ss is missing).
owns_port() {
    if command -v ss > /dev/null; then
        ss -Hltnp "sport = :$2" | grep -q "pid=$1,"
    else
        kill -0 "$1" 2> /dev/null
    fi
}

# check_port PORT VAR: refuse a port something already listens on (VAR names the setting).
check_port() {
    if ! port_free "$1"; then
        echo "port $1 is already in use (another server?); set $2" >&2
        exit 1
    fi
}

# wait_up WHAT PID PORT URL LOG: until URL answers from PID's own listener on PORT.
wait_up() {
    for _ in $(seq 100); do
        if curl -fsS "$4" > /dev/null 2>&1 && owns_port "$2" "$3"; then return 0; fi
        kill -0 "$2" 2>/dev/null || break
        sleep 0.1
    done
    echo "$1 did not come up; see $5" >&2
    exit 1
}

start_server() {
    check_port "$PORT" PORT
    "$SERVER" serve --config "$OUT/bench.toml" > "$OUT/server-$1.log" 2>&1 &
    SERVER_PID=$!
    wait_up server "$SERVER_PID" "$PORT" "http://$ADDR/healthz" "$OUT/server-$1.log"
}

# rawfan has no health endpoint; GET /stats (its subscriber count) answers once it accepts.
start_rawfan() {
    check_port "$RAWFAN_PORT" RAWFAN_PORT
    "$RAWFAN_BIN" "$RAWFAN_ADDR" > "$OUT/rawfan-$1.log" 2>&1 &
    RAWFAN_PID=$!
    wait_up rawfan "$RAWFAN_PID" "$RAWFAN_PORT" "http://$RAWFAN_ADDR/stats" "$OUT/rawfan-$1.log"
}

start_rawstorm() {
    check_port "$RAWSTORM_PORT" RAWSTORM_PORT
    "$RAWSTORM_BIN" "$RAWSTORM_ADDR" > "$OUT/rawstorm-$1.log" 2>&1 &
    RAWSTORM_PID=$!
    wait_up rawstorm "$RAWSTORM_PID" "$RAWSTORM_PORT" "http://$RAWSTORM_ADDR/healthz" "$OUT/rawstorm-$1.log"
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

# lt START STOP URL NAME ARGS...: one run of tickwire-loadtest against a server started fresh by
# START (and stopped by STOP), saved as NAME.json.
lt() {
    local start=$1 stop=$2 url=$3 name=$4
    shift 4
    wait_quiet
    "$start" "$name"
    log "$name: tickwire-loadtest $*"
    echo "tickwire-loadtest $* --url $url --source-ips $SOURCE_IPS --label $name --json" >> "$OUT/commands.txt"
    if ! "$LT" "$@" --url "$url" --source-ips "$SOURCE_IPS" --label "$name" --json --quiet \
        > "$OUT/$name.json" 2> "$OUT/$name.txt"; then
        echo "run $name failed:" >&2
    fi
    cat "$OUT/$name.txt" >&2
    "$stop"
}

# ours NAME ARGS...: one run against a fresh tickwire.
ours() { lt start_server stop_server "$URL" "$@"; }

# raw NAME ARGS...: one run against a fresh rawstorm (NAME contains -rawstorm: the report keeps
# those runs apart as the storm's reference).
raw() { lt start_rawstorm stop_rawstorm "ws://$RAWSTORM_ADDR/ws" "$@"; }

# pb SERVER NAME N R: one peerbench run against a fresh SERVER (tickwire or rawfan), saved as
# NAME.peerbench.json (tickwire) or NAME.rawfan.json (rawfan), the last line of its output.
# R = 0 is an idle run (connect and hold only, as in peerbench's own idle matrix).
pb() {
    local server=$1 name=$2 n=$3 r=$4 url pidvar out pub=()
    if [[ ! -x $PEERBENCH ]]; then
        echo "peerbench not found at $PEERBENCH; skipping $name" >&2
        return 0
    fi
    if [[ $server == rawfan && ! -x $RAWFAN_BIN ]]; then
        echo "rawfan not found at $RAWFAN_BIN; skipping $name" >&2
        return 0
    fi
    local timing=(--warmup "$WARMUP" --duration "$DURATION" --drain "$DRAIN" --connect-timeout 30 --deadline 45)
    if [[ $r == 0 ]]; then
        timing=(--warmup 0 --duration "$IDLE_S" --drain 0 --connect-timeout 40 --deadline 60)
    fi
    wait_quiet
    if [[ $server == rawfan ]]; then
        start_rawfan "$name"
        url=$RAWFAN_URL pidvar=RAWFAN_PID out=$OUT/$name.rawfan
        # peerbench's rawfan publish default is fixed at :9010 (only tickwire's follows --url).
        pub=(--pub-url "http://$RAWFAN_ADDR/pub")
    else
        start_server "$name.peerbench"
        url=$URL pidvar=SERVER_PID out=$OUT/$name.peerbench
    fi
    local args=(--adapter "$server" --url "$url" "${pub[@]}" -n "$n" -r "$r" "${timing[@]}" --source-ips "$SOURCE_IPS")
    log "$name: peerbench --adapter $server -n $n -r $r"
    echo "peerbench ${args[*]} --server-pid \$$pidvar --label $name --quiet" >> "$OUT/commands.txt"
    if "$PEERBENCH" "${args[@]}" --server-pid "${!pidvar}" --label "$name" --quiet > "$out.txt" 2>&1; then
        tail -1 "$out.txt" > "$out.json"
    else
        echo "peerbench run $name against $server failed" >&2
    fi
    head -6 "$out.txt" >&2
    if [[ $server == rawfan ]]; then stop_rawfan; else stop_server; fi
}

# peer NAME N R: a scenario measured by peerbench against tickwire.
peer() { pb tickwire "$@"; }

# rawfan NAME N R: the same against rawfan (nothing when RAWFAN=0).
rawfan() { if [[ $RAWFAN == 1 ]]; then pb rawfan "$@"; fi; }

FANOUT=(--warmup "${WARMUP}s" --duration "${DURATION}s" --drain "${DRAIN}s" --payload-bytes 100 --topics 1 --subs-per-conn 1)

# both NAME N R: one fan-out scenario measured by both tools back to back (ours, peerbench;
# with REPEAT=2 then peerbench, ours again).
both() {
    local name=$1 n=$2 r=$3
    ours "$name" fanout -n "$n" -r "$r" "${FANOUT[@]}"
    peer "$name" "$n" "$r"
    if (( REPEAT >= 2 )); then
        peer "$name-b" "$n" "$r"
        ours "$name-b" fanout -n "$n" -r "$r" "${FANOUT[@]}"
    fi
}

# target NAME N R: a scenario of the targets: rawfan before and after both tools (ABBA).
target() {
    local name=$1 n=$2 r=$3
    rawfan "$name" "$n" "$r"
    both "$name" "$n" "$r"
    if (( REPEAT >= 2 )); then rawfan "$name-b" "$n" "$r"; fi
}

# Fan-out, N = 10,000, one topic: the target rates (20: p99 at 200k deliveries/s; 200: the most
# deliveries/s), then the chart's sweep.
for r in 20 200; do
    target "fanout-n$N_BIG-r$r" "$N_BIG" "$r"
done
for r in $SWEEP; do
    both "fanout-n$N_BIG-r$r" "$N_BIG" "$r"
done
# p99 at 200k deliveries/s with 1,000 subscribers.
target "fanout-n$N_SMALL-r200" "$N_SMALL" 200

# Idle memory: peerbench against rawfan and tickwire (ABBA), then our own idle runs.
if [[ $RAWFAN == 1 ]]; then
    rawfan "idle-n$N_BIG" "$N_BIG" 0
    peer "idle-n$N_BIG" "$N_BIG" 0
    if (( REPEAT >= 2 )); then
        peer "idle-n$N_BIG-b" "$N_BIG" 0
        rawfan "idle-n$N_BIG-b" "$N_BIG" 0
    fi
fi
ours "idle-n$N_BIG" idle -n "$N_BIG" --duration "${IDLE_S}s"
ours "idle-n$N_MAX" idle -n "$N_MAX" --duration "${IDLE_S}s"
if [[ $SMOKE != 1 ]]; then
    ours connect-n10000 connect -n 10000
    ours publish publish --mode both --batch-size 100 --concurrency 4 --warmup 2s --duration 8s
else
    ours "connect-n$N_BIG" connect -n "$N_BIG"
fi
# Issue 16 (about 1.5 minutes): many topics, then the one-topic fan-out at the delivery rate the
# topics run offered (the report's ratio: deliveries/s ≥ 0.8× it), then a reconnect storm of
# N_BIG clients (the report compares its time with the connect run of as many clients above).
ours "topics-n$N_BIG" topics -n "$N_BIG" -t "$TOPICS_T" -k "$TOPICS_K" --patterns "$TOPICS_P" --group 10 \
    -r "$TOPICS_R" --warmup 2s --duration "${DURATION}s" --drain "${DRAIN}s"
base_rate=$(python3 -c 'import json, sys; r = json.load(open(sys.argv[1]))
print(round(r["offered_deliveries_per_s"] / r["params"]["connections"], 2))' "$OUT/topics-n$N_BIG.json" 2> /dev/null || true)
if [[ -n $base_rate ]]; then
    ours "topics-n$N_BIG-baseline" fanout -n "$N_BIG" -r "$base_rate" "${FANOUT[@]}"
else
    echo "no topics result: skipping its baseline" >&2
fi
STORM=(reconnect -n "$N_BIG" -t "$STORM_T" -k 2 --patterns 1 --group 10 -r "$STORM_R" --before 3s --after 2s
    --drain "${DRAIN}s")
if [[ $RAWSTORM == 1 ]]; then
    raw "connect-n$N_BIG-rawstorm" connect -n "$N_BIG"
    raw "reconnect-n$N_BIG-rawstorm" "${STORM[@]}"
fi
ours "reconnect-n$N_BIG" "${STORM[@]}"
if [[ $RAWSTORM == 1 ]]; then
    ours "connect-n$N_BIG-b" connect -n "$N_BIG"
    ours "reconnect-n$N_BIG-b" "${STORM[@]}"
    raw "connect-n$N_BIG-rawstorm-b" connect -n "$N_BIG"
    raw "reconnect-n$N_BIG-rawstorm-b" "${STORM[@]}"
fi
# Issue 18 (about 3 minutes): bytes per delivery of each payload shape plain, with deltas,
# compressed (--deflate: permessage-deflate) and both (the report sets each against plain), and
# the max rate: at most R updates a second, the newest last. Tick data is under both thresholds
# (delta.min_bytes 128, compression.min_bytes 256), so it runs compressed only, for the cost of
# the negotiation. A bandwidth run exits non-zero on any data mismatch; its JSON is kept either
# way.
BW=(--warmup "${BW_WARMUP}s" --duration "${BW_DURATION}s" --drain "${DRAIN}s")
for shape in tick book doc; do
    rate_var=BW_R_${shape^^}
    bw=(bandwidth -n "$N_BIG" --shape "$shape" -r "${!rate_var}" "${BW[@]}")
    ours "bandwidth-$shape-n$N_BIG" "${bw[@]}"
    ours "bandwidth-$shape-delta-n$N_BIG" "${bw[@]}" --delta
    ours "bandwidth-$shape-deflate-n$N_BIG" "${bw[@]}" --deflate
    if [[ $shape != tick ]]; then
        ours "bandwidth-$shape-delta-deflate-n$N_BIG" "${bw[@]}" --delta --deflate
    fi
done
ours "bandwidth-maxrate-n$N_BIG" bandwidth -n "$N_BIG" --shape tick --max-rate "$BW_MAX_RATE" -r "$BW_MAX_RATE_R" \
    --warmup 0s --duration "${DURATION}s" --drain "${DRAIN}s"
# Last, as they may not fit: N_MAX idle connections from one peerbench process (20,000 fds).
if [[ $RAWFAN == 1 ]]; then
    rawfan "idle-n$N_MAX" "$N_MAX" 0
    peer "idle-n$N_MAX" "$N_MAX" 0
fi

if [[ $SMOKE == 1 ]]; then
    log "writing the report to $OUT (smoke run: docs/ left alone)"
    cp docs/benchmarks.md "$OUT/benchmarks.md"
    "$LT" report --dir "$OUT" --doc "$OUT/benchmarks.md" --svg "$OUT/latency-vs-throughput.svg"
    echo "done: $OUT/benchmarks.md" >&2
    exit 0
fi
log "writing the report"
report "$OUT"
echo "done: docs/benchmarks.md, docs/latency-vs-throughput.svg (results in $OUT)" >&2
