#!/usr/bin/env bash
# End-to-end test of the web pages in headless Chromium (Debian's /usr/bin/chromium, driven by
# playwright-core; Playwright's own browsers are never downloaded).
#
#   bash web/e2e/run.sh      (installs chromium, redis-server and playwright-core when missing)
#
# Builds target/debug/tickwire (unless TICKWIRE_BIN points at a binary), starts it on a free
# 127.0.0.1 port with the price feed at 10 quotes/s per symbol, runs e2e.mjs (which restarts
# the server once on the same port, and starts a cluster node and its redis-server of its own
# for case (f)), and stops the server. Exits non-zero on any failure.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

# What the test needs and a fresh Debian machine lacks is installed here, saying so: Debian's
# chromium and redis-server (as root), and playwright-core from npm (package-lock.json).
need=()
[ -n "${CHROMIUM:-}" ] || [ -x /usr/bin/chromium ] || need+=(chromium)
command -v redis-server > /dev/null && command -v redis-cli > /dev/null || need+=(redis-server)
if [ "${#need[@]}" -gt 0 ]; then
    echo "e2e: installing the Debian packages ${need[*]} (the browser; case (f) runs a cluster node on Redis)"
    [ "$(id -u)" -eq 0 ] || { echo "e2e: not root: apt-get install -y ${need[*]} first" >&2; exit 1; }
    apt-get update -qq > /dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" > /tmp/e2e-apt.log 2>&1 \
        || { echo "e2e: installing ${need[*]} failed:" >&2; tail -20 /tmp/e2e-apt.log >&2; exit 1; }
fi
[ -x "${CHROMIUM:-/usr/bin/chromium}" ] || { echo "e2e: ${CHROMIUM:-/usr/bin/chromium} is missing" >&2; exit 1; }
if [ ! -d "$here/node_modules/playwright-core" ]; then
    echo "e2e: installing playwright-core from npm (web/e2e/package-lock.json; no browser download)"
    (cd "$here" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --silent)
fi

if [ -z "${TICKWIRE_BIN:-}" ]; then
    cargo build --quiet --bin tickwire
    TICKWIRE_BIN="$root/target/debug/tickwire"
fi
work="$(mktemp -d)"
port="$(node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')"

export TICKWIRE_BIN E2E_PORT="$port" E2E_PIDFILE="$work/server.pid" E2E_LOG="$work/server.log" E2E_WORK="$work"
export TICKWIRE__SERVER__LISTEN="127.0.0.1:$port" TICKWIRE__FEED__UPDATES_PER_SECOND=10 TICKWIRE__ADMIN__LISTEN=""
export TICKWIRE__SERVER__SHUTDOWN_TIMEOUT=2s

stop() {
    local pid
    pid="$(cat "$E2E_PIDFILE" 2> /dev/null || true)"
    if [ -n "$pid" ] && kill -0 "$pid" 2> /dev/null; then
        kill -TERM "$pid" 2> /dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2> /dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2> /dev/null || true
    fi
}
cleanup() {
    local rc=$?
    stop
    if [ "$rc" -ne 0 ]; then echo "--- server log (last 30 lines)"; tail -30 "$E2E_LOG" 2> /dev/null || true; fi
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT

"$TICKWIRE_BIN" serve >> "$E2E_LOG" 2>&1 &
echo $! > "$E2E_PIDFILE"
for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$port/healthz" > /dev/null 2>&1 && break
    sleep 0.1
done
curl -fsS "http://127.0.0.1:$port/healthz" > /dev/null || { echo "e2e: server did not start" >&2; exit 1; }
echo "e2e: server on 127.0.0.1:$port (pid $(cat "$E2E_PIDFILE"))"

timeout 120 node "$here/e2e.mjs"
