#!/usr/bin/env bash
# Checks of the deployment material in deploy/. CI runs it after the tests (.ci/run), when
# target/debug/tickwire exists; locally: `bash deploy/check.sh` after `cargo build`.
#
# Every check prints PASS, FAIL or SKIP (with the reason) and the last line counts them; the
# exit code is 1 if any check failed. A check whose tool is missing is skipped, never passed.
#   1. promtool: alert rules, their unit tests, the Prometheus config
#   2-3. deploy/check_deploy.py: YAML parsing, TICKWIRE__ keys and TOML files against the
#      binary's check-config, ports/probes/timeouts/paths consistency, a smoke run of the binary
#   4. nginx -t on deploy/nginx/nginx.conf          (if nginx is installed, or $NGINX_BIN)
#   5. docker compose config -q                      (if docker compose or docker-compose works)
#   6. systemd-analyze verify on the unit            (if systemd-analyze is installed)
#   7. kubectl kustomize deploy/k8s                  (if kubectl is installed)
# Environment: TICKWIRE_BIN (default target/debug/tickwire), NGINX_BIN (an nginx binary), CI.
# (Not NGINX: nginx itself reads that variable, as a list of inherited sockets.)
set -uo pipefail
cd "$(dirname "$0")/.."

export TICKWIRE_BIN="${TICKWIRE_BIN:-target/debug/tickwire}"
passed=0 failed=0 skipped=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

pass() { echo "PASS: $*"; passed=$((passed + 1)); }
fail() { echo "FAIL: $*"; failed=$((failed + 1)); }
skip() { echo "SKIP: $*"; skipped=$((skipped + 1)); }
# run NAME CMD...: PASS/FAIL on the exit code, with the command's output indented.
run() {
    local name=$1; shift
    if "$@" > "$tmp/out" 2>&1; then pass "$name"; else fail "$name (exit $?)"; fi
    sed 's/^/      /' "$tmp/out"
}

echo "== deploy checks"

# 1. Prometheus rules and config.
if command -v promtool > /dev/null; then
    run "promtool check rules deploy/prometheus/alerts.yml" \
        promtool check rules deploy/prometheus/alerts.yml
    run "promtool test rules deploy/prometheus/alerts_test.yml" \
        promtool test rules deploy/prometheus/alerts_test.yml
    run "promtool check config deploy/prometheus/prometheus.yml" \
        promtool check config deploy/prometheus/prometheus.yml
else
    skip "promtool checks: promtool is not installed (Debian package prometheus)"
fi

# 2-3. YAML, env keys, consistency, smoke run. PyYAML is installed from PyPI when missing; if
# that fails, check_deploy.py skips (and says so) the checks that need it.
if ! python3 -c 'import yaml' 2> /dev/null; then
    echo "PyYAML is missing: pip install pyyaml"
    python3 -m pip install --quiet --disable-pip-version-check pyyaml > "$tmp/pip" 2>&1 \
        || sed 's/^/      /' "$tmp/pip"
fi
python3 deploy/check_deploy.py > "$tmp/py" 2>&1
py_rc=$?
cat "$tmp/py"
passed=$((passed + $(grep -c '^PASS:' "$tmp/py")))
failed=$((failed + $(grep -c '^FAIL:' "$tmp/py")))
skipped=$((skipped + $(grep -c '^SKIP:' "$tmp/py")))
if [ "$py_rc" -ne 0 ] && ! grep -q '^FAIL:' "$tmp/py"; then
    fail "deploy/check_deploy.py exited $py_rc"
fi

# 4. nginx -t. The upstream hosts tickwire-N only resolve inside compose, and Debian's nginx
# has compiled-in temp paths under /var/lib/nginx: test a copy with those two adapted.
nginx_bin="${NGINX_BIN:-$(command -v nginx || true)}"
if [ -n "$nginx_bin" ] && [ -x "$nginx_bin" ]; then
    mkdir -p "$tmp/nginx"
    sed -e 's/server tickwire\([-a-z0-9]*\):/server 127.0.0.1:/' \
        -e "s#^http {#http {\n    client_body_temp_path $tmp/nginx/b; proxy_temp_path $tmp/nginx/p; fastcgi_temp_path $tmp/nginx/f; uwsgi_temp_path $tmp/nginx/u; scgi_temp_path $tmp/nginx/s;#" \
        deploy/nginx/nginx.conf > "$tmp/nginx/nginx.conf"
    run "nginx -t on deploy/nginx/nginx.conf ($("$nginx_bin" -v 2>&1 | sed 's/.*version: //'))" \
        "$nginx_bin" -t -e stderr -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" -g "pid $tmp/nginx/nginx.pid;"
else
    skip "nginx -t: nginx is not installed (set NGINX_BIN=/path/to/nginx to run it)"
fi

# 5. docker compose config (parses and validates the file; needs no engine).
if docker compose version > /dev/null 2>&1; then
    run "docker compose -f deploy/docker-compose.yml config -q" \
        docker compose -f deploy/docker-compose.yml config -q
elif command -v docker-compose > /dev/null; then
    run "docker-compose -f deploy/docker-compose.yml config -q ($(docker-compose version --short 2>/dev/null))" \
        docker-compose -f deploy/docker-compose.yml config -q
else
    skip "docker compose config: neither the docker compose plugin nor docker-compose is installed"
fi

# 6. systemd-analyze verify. It requires ExecStart's binary to exist: verify a copy of the unit
# whose ExecStart points at $TICKWIRE_BIN instead of /usr/local/bin/tickwire.
if ! command -v systemd-analyze > /dev/null; then
    skip "systemd-analyze verify: systemd-analyze is not installed"
elif [ ! -x "$TICKWIRE_BIN" ]; then
    skip "systemd-analyze verify: $TICKWIRE_BIN not built"
else
    bin_abs=$(realpath "$TICKWIRE_BIN")
    sed "s#/usr/local/bin/tickwire#$bin_abs#g" deploy/systemd/tickwire.service > "$tmp/tickwire.service"
    run "systemd-analyze verify deploy/systemd/tickwire.service (ExecStart -> $TICKWIRE_BIN)" \
        systemd-analyze verify "$tmp/tickwire.service"
    if systemd-analyze security --help 2>/dev/null | grep -q -- --offline; then
        score=$(systemd-analyze security --offline=true "$tmp/tickwire.service" 2>&1 | tail -1)
        echo "      systemd-analyze security: ${score#→ }"
    fi
fi

# 7. kustomize build of the Kubernetes manifests (offline; no cluster needed).
if command -v kubectl > /dev/null; then
    if kubectl kustomize deploy/k8s > "$tmp/k8s.yaml" 2> "$tmp/out"; then
        pass "kubectl kustomize deploy/k8s: $(grep -c '^kind:' "$tmp/k8s.yaml") objects ($(grep '^kind:' "$tmp/k8s.yaml" | awk '{print $2}' | paste -sd, -))"
    else
        fail "kubectl kustomize deploy/k8s"
        sed 's/^/      /' "$tmp/out"
    fi
else
    skip "kubectl kustomize: kubectl is not installed"
fi

echo "deploy: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
