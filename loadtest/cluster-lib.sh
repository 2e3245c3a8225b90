# Sourced by run-cluster-benchmark.sh and run-cluster-scale.sh: what both do before measuring.
# Builds the release binaries, clears TICKWIRE__* from the environment (the nodes get exactly
# what the script sets), raises the open-files limit, and stops every process started through
# `start_redis` / `start_node` on exit. Needs OUT set (the results directory).

mkdir -p "$OUT"
cargo build --release -q -p tickwire -p tickwire-loadtest
for v in $(env | grep -o '^TICKWIRE__[A-Za-z0-9_]*' || true); do unset "$v"; done
ulimit -n 20000
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2> /dev/null || true; done; wait 2> /dev/null || true; }
trap cleanup EXIT
# Stops everything started so far.
stop_all() { cleanup; pids=(); sleep 0.5; }

# start_redis PORT LOG [ARG...]: a redis-server without persistence (and ARGs); its pid in
# $started.
start_redis() {
    local port=$1 log=$2
    shift 2
    redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no "$@" > "$log" 2>&1 &
    started=$!
    pids+=("$started")
    for _ in $(seq 50); do redis-cli -p "$port" ping 2> /dev/null | grep -q PONG && return; sleep 0.1; done
    echo "redis-server on $port did not answer" >&2
    exit 1
}

# start_node PORT [VAR=VALUE...]: a tickwire node (no feed, no per-address limit) with the
# broker settings given as environment assignments, waited for until ready; its pid in $started.
start_node() {
    local port=$1
    shift
    env TICKWIRE__SERVER__LISTEN="127.0.0.1:$port" TICKWIRE__FEED__ENABLED=false TICKWIRE__LOG__LEVEL=warn \
        TICKWIRE__LIMITS__MAX_CONNECTIONS_PER_IP=0 "$@" target/release/tickwire serve &
    started=$!
    pids+=("$started")
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/readyz" > /dev/null && return; sleep 0.1; done
    echo "node on $port not ready" >&2
    exit 1
}
