#!/usr/bin/env bash
# Quick WebSocket conformance check: builds the server, starts it with the echo endpoint on a
# free loopback port, runs a subset of the Autobahn TestSuite against GET /echo through the
# shared runner (../shared/tools/autobahn.sh), stops the server, and fails on any case that is
# not OK / NON-STRICT / INFORMATIONAL, or when the server died during the run.
#
#   usage: loadtest/autobahn-quick.sh [CASES_JSON]
#     CASES_JSON  default '["1.*","2.*","3.*","4.*","5.*","6.*","7.*","10.*"]' (well under a
#                 minute once the suite is installed); '["*"]' is the full run (9.* sends 16 MiB
#                 messages).
#   env: AUTOBAHN_SH (runner, default ../shared/tools/autobahn.sh), REPORT_DIR (default
#        target/autobahn-report).
#
# Not part of .ci/run: the runner installs Python 2.7 and a virtualenv on first use, which is
# too slow and fragile for CI.
set -euo pipefail
cd "$(dirname "$0")/.."
cases=${1:-'["1.*","2.*","3.*","4.*","5.*","6.*","7.*","10.*"]'}
runner=${AUTOBAHN_SH:-../shared/tools/autobahn.sh}
report=${REPORT_DIR:-$PWD/target/autobahn-report}
[[ -f $runner ]] || { echo "autobahn-quick: runner $runner not found (set AUTOBAHN_SH)" >&2; exit 2; }

cargo build --release -q -p tickwire
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log=$(mktemp)
# Limits as the full suite needs them: 9.* echoes messages of up to 16 MiB, which must also fit
# in the outbound queue.
TICKWIRE__SERVER__LISTEN=127.0.0.1:$port TICKWIRE__SERVER__ECHO_ENDPOINT=true \
  TICKWIRE__SERVER__MAX_MESSAGE_BYTES=16777216 TICKWIRE__QUEUE__MAX_BYTES=33554432 \
  TICKWIRE__FEED__ENABLED=false TICKWIRE__LOG__LEVEL=warn \
  target/release/tickwire serve >"$log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; rm -f "$log"' EXIT

for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break
  kill -0 "$server" 2>/dev/null || { echo "autobahn-quick: server did not start:" >&2; cat "$log" >&2; exit 1; }
  sleep 0.1
done

status=0
bash "$runner" "ws://127.0.0.1:$port/echo" "$cases" "$report" || status=1
if ! kill -0 "$server" 2>/dev/null; then
  echo "autobahn-quick: the server exited during the run:" >&2
  cat "$log" >&2
  status=1
fi
echo "autobahn-quick: report in $report/index.html"
exit $status
