#!/usr/bin/env python3
"""Consistency checks of the deployment material in deploy/, run by deploy/check.sh.

Every check prints one line: `PASS: ...`, `FAIL: ...` or `SKIP: ... (reason)`; the exit code is 1
if any check failed. What is checked:

- every YAML file under deploy/ parses, without a key repeated in one mapping;
- every TOML file under deploy/ is accepted by `tickwire check-config --config FILE`;
- every TICKWIRE__SECTION__KEY used in deploy/ and docs/deploy.md is a real settings key (and
  its value, where one is given, is valid): `tickwire check-config` with that variable set exits 0;
- the effective settings of each deployment (Dockerfile, compose, Kubernetes, systemd), as the
  binary computes them, agree with the ports, probes, timeouts and limits around them;
- the cluster wiring: every compose node uses the Redis broker at the redis service, is in the
  nginx upstream and the Prometheus targets, and only one runs the feed; the Kubernetes pods
  use the redis Service, the HPA keeps at least two and the PDB lets one go;
- the files that deploy/ refers to exist (dashboard, rule files, provisioning, kustomize inputs);
- alerts.yml queries only metrics that /metrics exports (the broker's, pending issue #8, are
  skipped until src/metrics.rs declares them), and each alert fires in alerts_test.yml;
- a smoke run of the binary with the Kubernetes configuration: probes on the admin port, the
  Dockerfile's HEALTHCHECK command, /readyz 503 and close 1001 during the drain, exit 0.

The binary is $TICKWIRE_BIN (default target/debug/tickwire, which `cargo test` builds). Without
it the binary-based checks are skipped, or fail when CI is set.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

try:
    import yaml
except ImportError:  # check.sh installs PyYAML when it can; otherwise the YAML checks skip.
    yaml = None

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
BIN = Path(os.environ.get("TICKWIRE_BIN", ROOT / "target" / "debug" / "tickwire"))
if not BIN.is_absolute():
    BIN = ROOT / BIN
IN_CI = os.environ.get("CI", "") not in ("", "0", "false")

failures = 0


def ok(msg: str) -> None:
    print(f"PASS: {msg}", flush=True)


def bad(msg: str) -> None:
    global failures
    failures += 1
    print(f"FAIL: {msg}", flush=True)


def skip(msg: str) -> None:
    print(f"SKIP: {msg}", flush=True)


def check(cond: bool, msg: str, detail: str = "") -> bool:
    if cond:
        ok(msg)
    else:
        bad(f"{msg}{': ' + detail if detail else ''}")
    return cond


def rel(p: Path) -> str:
    return str(p.relative_to(ROOT)) if p.is_absolute() and ROOT in p.parents else str(p)


# ---------------------------------------------------------------------------------------------
# Durations and sizes as the various files write them.

UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "sec": 1, "m": 60, "min": 60,
         "h": 3600, "hour": 3600}


def seconds(text: str, bare_unit: str = "s") -> float:
    """'10s', '1m 30s', '500ms', '1.5s', '75' (bare_unit), 'infinity' -> seconds."""
    text = str(text).strip()
    if re.fullmatch(r"[\d.]+", text):
        return float(text) * UNITS[bare_unit]
    parts = re.findall(r"([\d.]+)\s*([a-zµ]+)", text)
    if not parts or "".join(n + u for n, u in parts) != re.sub(r"\s+", "", text):
        raise ValueError(f"unreadable duration {text!r}")
    return sum(float(n) * UNITS[u] for n, u in parts)


def nginx_size(text: str) -> int:
    m = re.fullmatch(r"(\d+)([kKmMgG]?)", text.strip())
    if not m:
        raise ValueError(f"unreadable size {text!r}")
    return int(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2).lower()]


def port_of(addr: str | None) -> int | None:
    return None if addr is None else int(addr.rsplit(":", 1)[1])


# ---------------------------------------------------------------------------------------------
# The binary: check-config with a clean environment, from a directory without config/.

SCRATCH = Path(tempfile.mkdtemp(prefix="tickwire-deploy-check-"))


def check_config(env: dict[str, str], config: Path | None = None) -> subprocess.CompletedProcess:
    args = [str(BIN), "check-config"] + (["--config", str(config)] if config else [])
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(SCRATCH)}
    return subprocess.run(args, env={**clean, **env}, cwd=SCRATCH, capture_output=True, text=True,
                          timeout=30)


def effective(stdout: str) -> dict[str, dict[str, str]]:
    """The scalar keys of check-config's output (the effective configuration as TOML), by
    section, as strings: strings as they are, the rest as TOML writes them."""
    out: dict[str, dict[str, str]] = {}
    for name, section in tomllib.loads(stdout).items():
        if isinstance(section, dict):
            out[name] = {k: v if isinstance(v, str) else json.dumps(v) for k, v in section.items()
                         if not isinstance(v, (dict, list))}
    return out


class Eff:
    """Effective settings of one deployment, as the binary computed them."""

    def __init__(self, s: dict[str, dict[str, str]]):
        self.s = s
        self.listen = s["server"]["listen"]
        admin = s["admin"]["listen"]
        self.admin = admin or None
        self.server_port = port_of(self.listen)
        self.admin_port = port_of(self.admin)
        # The port that serves /healthz, /readyz and /metrics.
        self.ops_port = self.admin_port or self.server_port
        self.ping = seconds(s["server"]["ping_interval"])
        self.idle = seconds(s["server"]["idle_timeout"])
        self.shutdown = seconds(s["server"]["shutdown_timeout"])
        self.max_connections = int(s["server"]["max_connections"])
        self.max_body = int(s["http"]["max_body_bytes"])
        # "memory" or "redis" (a broker.redis_url with a password is not printed: read it from
        # the files instead).
        self.broker = s.get("broker", {}).get("kind")
        self.prefix = s.get("broker", {}).get("prefix", "").strip('"')
        self.feed = s.get("feed", {}).get("enabled") == "true"

    def __str__(self) -> str:
        return (f"listen {self.listen}, admin {self.admin or '-'}, ping {self.ping:g}s, "
                f"idle {self.idle:g}s, shutdown {self.shutdown:g}s, "
                f"max_connections {self.max_connections}, broker {self.broker}, "
                f"feed {'on' if self.feed else 'off'}")


def settings_of(what: str, env: dict[str, str], config: Path | None = None) -> Eff | None:
    r = check_config(env, config)
    shown = " ".join(f"{k}={v}" for k, v in sorted(env.items())) or "no env"
    cfg = f" --config {rel(config)}" if config else ""
    if r.returncode != 0:
        bad(f"{what}: check-config{cfg} with {shown} exited {r.returncode}: {r.stderr.strip()}")
        return None
    eff = Eff(effective(r.stdout))
    ok(f"{what}: check-config{cfg} with {shown} exits 0 ({eff})")
    return eff


# ---------------------------------------------------------------------------------------------

if yaml is not None:
    class StrictLoader(yaml.SafeLoader):
        """SafeLoader that refuses a key given twice in one mapping, as kubectl and docker
        compose do (PyYAML keeps the last one silently). Keys brought in by a `<<` merge may be
        overridden; that is what merges are for."""

        def construct_mapping(self, node, deep=False):
            seen = set()
            for k, _ in node.value:
                if k.tag == "tag:yaml.org,2002:merge" or not isinstance(k, yaml.ScalarNode):
                    continue
                if k.value in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"duplicate key {k.value!r}", k.start_mark)
                seen.add(k.value)
            return super().construct_mapping(node, deep)


def load_yaml_files() -> dict[Path, list]:
    files = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml"))
    docs: dict[Path, list] = {}
    if yaml is None:
        skip(f"YAML parsing of {len(files)} files under deploy/ (PyYAML is not installed)")
        return docs
    parsed = []
    for p in files:
        try:
            docs[p] = [d for d in yaml.load_all(p.read_text(), Loader=StrictLoader)
                       if d is not None]
            parsed.append(rel(p))
        except yaml.YAMLError as e:
            bad(f"YAML: {rel(p)} does not parse: {' '.join(str(e).split())}")
    check(len(parsed) == len(files) and files != [],
          f"YAML: {len(parsed)} files under deploy/ parse, no duplicate keys: {', '.join(parsed)}")
    return docs


ENV_RE = re.compile(
    r"(TICKWIRE__[A-Za-z0-9_]+)"
    r"(?:(?:=|:[ \t]+)(?:\"([^\"\n]*)\"|'([^'\n]*)'|([^\s\"'`)]*)))?")
PLACEHOLDER = "TICKWIRE__SECTION__KEY"
# Settings that check-config validates only together with another one: broker.redis_url is
# checked only when broker.kind = "redis" (the memory broker ignores it).
CONTEXT = {"TICKWIRE__BROKER__REDIS_URL": {"TICKWIRE__BROKER__KIND": "redis"}}


def env_mentions() -> tuple[dict[str, set], dict[tuple, list[str]]]:
    """TICKWIRE__ names in deploy/ and docs/deploy.md: {name: {values}} and the files of each
    (name, value) pair ((name, None) for mentions without a value)."""
    files = [p for p in DEPLOY.rglob("*")
             if p.is_file() and p.name not in ("check.sh", "check_deploy.py")]
    files.append(ROOT / "docs" / "deploy.md")
    values: dict[str, set] = {}
    where: dict[tuple, list[str]] = {}
    for p in files:
        if not p.exists():
            continue
        text = p.read_text(errors="replace")
        for m in ENV_RE.finditer(text):
            name = m.group(1)
            if name == PLACEHOLDER:
                continue
            values.setdefault(name, set())
            given = next((g for g in m.group(2, 3, 4) if g is not None), None)
            if m.group(4):  # unquoted, in prose: a sentence's full stop is not part of it
                given = m.group(4).rstrip(".,;:")
            if given is not None and "$" in given:
                given = None
            if given is not None:
                values[name].add(given)
            files = where.setdefault((name, given), [])
            if rel(p) not in files:
                files.append(rel(p))
    return values, where


def k8s_env_pairs(docs: dict[Path, list]) -> dict[str, set]:
    """name/value pairs of container env lists in the Kubernetes manifests."""
    pairs: dict[str, set] = {}

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("name"), str) and node["name"].startswith("TICKWIRE__") \
                    and "value" in node:
                pairs.setdefault(node["name"], set()).add(str(node["value"]))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for p, ds in docs.items():
        walk(ds)
    return pairs


def check_env_keys(docs: dict[Path, list]) -> None:
    values, where = env_mentions()
    for name, vals in k8s_env_pairs(docs).items():
        values.setdefault(name, set()).update(vals)
        for v in vals:
            where.setdefault((name, v), []).append("deploy/k8s env")
    if not values:
        bad("env keys: no TICKWIRE__ variable found in deploy/ (the scan is broken)")
        return
    for name in sorted(values):
        files = ", ".join(sorted({f for (n, _), fs in where.items() if n == name for f in fs}))
        # TICKWIRE__SECTION__KEY, or a key of a table inside a section
        # (TICKWIRE__BROKER__SENTINEL__MASTER_NAME); check-config below proves it exists.
        if len(name.split("__")) < 3 or "" in name.split("__"):
            bad(f"env key {name} ({files}): not of the form TICKWIRE__SECTION__KEY")
            continue
        if values[name]:
            ctx = CONTEXT.get(name, {})
            with_ctx = "".join(f" (with {k}={v})" for k, v in ctx.items())
            for v in sorted(values[name]):
                r = check_config({**ctx, name: v})
                files = ", ".join(where.get((name, v), []))
                check(r.returncode == 0,
                      f"env key {name}={v!r} ({files}) is a valid setting{with_ctx}",
                      f"check-config exited {r.returncode}: {r.stderr.strip()}")
        else:
            # Named without a value (prose): the key must exist; any value error is fine.
            r = check_config({name: "x"})
            known = r.returncode == 0 or "unknown field" not in r.stderr
            check(known, f"env key {name} ({files}, no value given) names an existing setting",
                  r.stderr.strip())


def dockerfile() -> tuple[dict[str, str], list[int], list[str] | None, dict[str, str]]:
    """ENV pairs, EXPOSE ports, HEALTHCHECK CMD (exec form), other instructions of the runtime
    stage."""
    text = (DEPLOY / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)  # join continuation lines
    stages = re.split(r"(?m)^FROM ", text)
    runtime = stages[-1]
    env: dict[str, str] = {}
    expose: list[int] = []
    hc = None
    other: dict[str, str] = {}
    for line in runtime.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word == "ENV":
            for tok in shlex.split(rest):
                k, _, v = tok.partition("=")
                env[k] = v
        elif word == "EXPOSE":
            expose += [int(x.split("/")[0]) for x in rest.split()]
        elif word == "HEALTHCHECK":
            m = re.search(r"CMD\s+(\[.*\])\s*$", rest)
            hc = json.loads(m.group(1)) if m else None
        else:
            other[word] = rest.strip()
    return env, expose, hc, other


def check_dockerfile() -> tuple[list[str] | None, Eff | None]:
    env, expose, hc, other = dockerfile()
    check(other.get("USER", "root").split(":")[0] not in ("root", "0"),
          f"Dockerfile: runtime stage runs as a non-root user (USER {other.get('USER')})")
    check(other.get("STOPSIGNAL") == "SIGTERM", "Dockerfile: STOPSIGNAL SIGTERM")
    check(hc is not None and any("/healthz" in a for a in hc),
          "Dockerfile: HEALTHCHECK probes /healthz (exec form)")
    tw_env = {k: v for k, v in env.items() if k.startswith("TICKWIRE__")}
    eff = settings_of("Dockerfile ENV", tw_env) if BIN.exists() else None
    if eff:
        check(eff.server_port in expose,
              f"Dockerfile: EXPOSE {expose} includes server.listen port {eff.server_port}")
        hp = int(env.get("HEALTHCHECK_PORT", "8080"))
        check(hp == eff.ops_port,
              f"Dockerfile: HEALTHCHECK_PORT {hp} is the port serving /healthz ({eff.ops_port})")
    return hc, eff


def compose_env(svc: dict) -> dict[str, str]:
    env = svc.get("environment", {})
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    return {k: str(v) for k, v in env.items()}


def redis_host_port(url: str) -> tuple[str, int] | None:
    """Host and port of a redis:// or rediss:// URL (the password, if any, is not returned)."""
    m = re.fullmatch(r"rediss?://(?:[^@/]*@)?([^:/@]+)(?::(\d+))?(?:/\d*)?", url)
    return (m.group(1), int(m.group(2) or 6379)) if m else None


def check_compose(docs: dict[Path, list]) -> None:
    path = DEPLOY / "docker-compose.yml"
    if path not in docs:
        return
    compose = docs[path][0]
    services = compose.get("services", {})
    # The tickwire nodes: tickwire-1, tickwire-2, ...; nothing else may be named tickwire*.
    nodes = sorted((n for n in services if re.fullmatch(r"tickwire-\d+", n)),
                   key=lambda n: int(n.split("-")[1]))
    others = {"redis", "nginx", "prometheus", "grafana"}
    if not check(len(nodes) >= 2 and others <= set(services)
                 and all(n in nodes for n in services if n.startswith("tickwire")),
                 f"compose: tickwire nodes {nodes} (at least two, named tickwire-N), "
                 f"redis, nginx, prometheus, grafana ({sorted(services)})"):
        return
    img_env, _, _, _ = dockerfile()
    envs = {n: compose_env(services[n]) for n in nodes}
    # The image's ENV applies first; compose environment overrides it.
    merged = {n: {**{k: v for k, v in img_env.items() if k.startswith("TICKWIRE__")},
                  **{k: v for k, v in envs[n].items() if k.startswith("TICKWIRE__")}}
              for n in nodes}

    def across(msg: str, ok_of) -> None:
        """One check over every node: PASS names them all, FAIL the ones that do not hold."""
        failing = [n for n in nodes if not ok_of(n)]
        check(not failing, f"compose: {', '.join(nodes)}: {msg}",
              f"not on {', '.join(failing)}")

    # The nodes differ only in their environment: the same image, ports, limits and stop
    # settings, so that nginx and Prometheus can treat them alike.
    def shape(n: str) -> dict:
        return {k: v for k, v in services[n].items() if k != "environment"}
    across("same service definition apart from `environment`",
           lambda n: shape(n) == shape(nodes[0]))
    # ... and their environment only in the feed switch (every other setting is shared).
    def env_but_feed(n: str) -> dict:
        return {k: v for k, v in envs[n].items() if k != "TICKWIRE__FEED__ENABLED"}
    across("same environment apart from TICKWIRE__FEED__ENABLED",
           lambda n: env_but_feed(n) == env_but_feed(nodes[0]))
    # Bind mounts: every host path exists.
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0] if isinstance(vol, str) else vol.get("source", "")
            if src.startswith((".", "/")):
                check((DEPLOY / src).exists(), f"compose: {name} mounts {src}, which exists")

    def builds_dockerfile(n: str) -> bool:
        build = services[n].get("build", {})
        return (DEPLOY / build.get("context", ".") / build.get("dockerfile", "Dockerfile")) \
            .resolve() == (DEPLOY / "Dockerfile").resolve()
    across("build deploy/Dockerfile", builds_dockerfile)
    # Redis: the broker of every node, reachable on the compose network only.
    redis = services["redis"]
    check(str(redis.get("image", "")).startswith("redis:") and "ports" not in redis,
          f"compose: redis runs {redis.get('image')} and publishes no port")
    urls = {n: merged[n].get("TICKWIRE__BROKER__REDIS_URL", "") for n in nodes}
    redis_ports = {int(str(p).split("/")[0]) for p in redis.get("expose", [6379])}
    across(f"TICKWIRE__BROKER__REDIS_URL {sorted(set(urls.values()))} is the redis service on "
           f"a port it exposes ({sorted(redis_ports)})",
           lambda n: (redis_host_port(urls[n]) or ("", 0))[0] == "redis"
           and redis_host_port(urls[n])[1] in redis_ports)

    def waits_for_redis(n: str) -> bool:
        dep = services[n].get("depends_on", {})
        return "redis" in dep and (isinstance(dep, list) or "condition" in dep["redis"])
    across("depend on redis", waits_for_redis)
    nginx_deps = services["nginx"].get("depends_on", {})
    check(set(nodes) <= set(nginx_deps),
          f"compose: nginx depends on every node ({sorted(nginx_deps)})")
    # The nodes believe nginx's X-Forwarded-For: nginx's fixed address is a trusted proxy.
    nginx_nets = services["nginx"].get("networks", {})
    nginx_ip = (nginx_nets.get("default") or {}).get("ipv4_address") \
        if isinstance(nginx_nets, dict) else None

    def trusts_nginx(n: str) -> bool:
        nets = [c.strip() for c in merged[n].get("TICKWIRE__SERVER__TRUSTED_PROXIES", "").split(",")]
        return nginx_ip is not None and any(
            c and ipaddress.ip_address(nginx_ip) in ipaddress.ip_network(c) for c in nets)
    across(f"server.trusted_proxies holds nginx's address {nginx_ip}", trusts_nginx)
    # Grafana: provider path is where the dashboard is mounted; provisioning datasource.
    graf = services["grafana"]
    dash_mount = next((v for v in graf.get("volumes", []) if "tickwire.json" in str(v)), None)
    prov = docs.get(DEPLOY / "grafana/provisioning/dashboards/tickwire.yml", [{}])[0]
    prov_path = prov.get("providers", [{}])[0].get("options", {}).get("path")
    if check(dash_mount is not None, "compose: grafana mounts dashboards/tickwire.json"):
        src, target = dash_mount.split(":")[:2]
        check((DEPLOY / src).resolve() == ROOT / "dashboards" / "tickwire.json",
              f"compose: grafana's dashboard mount source {src} is dashboards/tickwire.json")
        check(prov_path == str(Path(target).parent),
              f"grafana: dashboard provider path {prov_path} holds the mounted {target}")
        dash = json.loads((ROOT / "dashboards" / "tickwire.json").read_text())
        var = [v for v in dash.get("templating", {}).get("list", []) if v.get("name") == "datasource"]
        check(bool(var) and var[0].get("query") == "prometheus",
              "grafana: dashboards/tickwire.json has the `datasource` variable (prometheus)")
    ds = docs.get(DEPLOY / "grafana/provisioning/datasources/prometheus.yml", [{}])[0]
    dss = ds.get("datasources", [])
    prom = [d for d in dss if d.get("type") == "prometheus"]
    if check(len(prom) == 1 and prom[0].get("isDefault") is True,
             "grafana: one provisioned prometheus datasource, isDefault"):
        host = re.match(r"https?://([^:/]+):(\d+)", prom[0].get("url", ""))
        check(host is not None and host.group(1) in services and host.group(2) == "9090",
              f"grafana: datasource url {prom[0].get('url')} is the compose prometheus service")
    # Prometheus: rule files exist.
    pcfg = docs.get(DEPLOY / "prometheus/prometheus.yml", [{}])[0]
    for rf in pcfg.get("rule_files", []):
        check((DEPLOY / "prometheus" / rf).exists(), f"prometheus.yml: rule file {rf} exists")
    tw_job = [j for j in pcfg.get("scrape_configs", []) if j.get("job_name") == "tickwire"]
    targets = [t for j in tw_job for sc in j.get("static_configs", []) for t in sc.get("targets", [])]

    if not BIN.exists():
        return
    effs = {n: settings_of(f"compose {n} environment", merged[n]) for n in nodes}
    if not all(effs.values()):
        return
    eff = effs[nodes[0]]
    across("the effective settings are the same apart from the feed",
           lambda n: {k: v for k, v in vars(effs[n]).items() if k not in ("s", "feed")}
           == {k: v for k, v in vars(eff).items() if k not in ("s", "feed")})
    across("broker.kind = redis (one shared broker)", lambda n: effs[n].broker == "redis")
    on = [n for n in nodes if effs[n].feed]
    check(len(on) == 1, f"compose: the demo feed runs on exactly one node ({on}); on several, "
          "each would publish its own prices on the same topics")
    across(f"server.listen {eff.listen} is reachable from other containers",
           lambda n: not str(effs[n].listen).startswith("127."))
    if eff.admin:
        across(f"admin.listen {eff.admin} is reachable by Prometheus",
               lambda n: not str(effs[n].admin).startswith("127."))
    want = {eff.server_port} | ({eff.admin_port} if eff.admin_port else set())
    across(f"expose {sorted(want)}",
           lambda n: want <= {int(str(p).split("/")[0]) for p in services[n].get("expose", [])})

    def hc_port(n: str) -> int:
        return int(envs[n].get("HEALTHCHECK_PORT", img_env.get("HEALTHCHECK_PORT", "8080")))
    across(f"HEALTHCHECK_PORT serves /healthz ({eff.ops_port})",
           lambda n: hc_port(n) == effs[n].ops_port)
    want_targets = [f"{n}:{effs[n].ops_port}" for n in nodes]
    check(sorted(targets) == sorted(want_targets),
          f"prometheus.yml: job tickwire scrapes {targets}: every node's /metrics port "
          f"({want_targets})")
    across(f"stop_grace_period > server.shutdown_timeout {eff.shutdown:g}s",
           lambda n: seconds(services[n].get("stop_grace_period", "10s")) > effs[n].shutdown)
    across("stop with SIGTERM",
           lambda n: services[n].get("stop_signal", "SIGTERM") == "SIGTERM")

    def nofile_hard(n: str):
        nofile = services[n].get("ulimits", {}).get("nofile", {})
        return nofile.get("hard") if isinstance(nofile, dict) else nofile
    across(f"nofile hard limit {nofile_hard(nodes[0])} > server.max_connections "
           f"{eff.max_connections}",
           lambda n: nofile_hard(n) is not None and int(nofile_hard(n)) > effs[n].max_connections)
    check_nginx(eff, nodes)


def check_nginx(eff: Eff, nodes: list[str]) -> None:
    text = (DEPLOY / "nginx" / "nginx.conf").read_text()
    code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    up = re.search(r"upstream\s+tickwire\s*\{(.*?)\}", code, re.S)
    ups = re.findall(r"^\s*server\s+([\w.-]+):(\d+)", up.group(1) if up else "", re.M)
    check(sorted(h for h, _ in ups) == sorted(nodes),
          f"nginx.conf: upstream tickwire lists every compose node "
          f"({', '.join(h for h, _ in ups)})", f"compose nodes: {nodes}")
    check(ups != [] and all(int(p) == eff.server_port for _, p in ups),
          f"nginx.conf: upstream tickwire ports {[p for _, p in ups]} = server.listen port "
          f"{eff.server_port}")
    ws = re.search(r"location\s*=?\s*/ws\s*\{(.*?)\}", code, re.S)
    if not check(ws is not None, "nginx.conf: has a location for /ws"):
        return
    block = ws.group(1)
    check(re.search(r"proxy_set_header\s+Upgrade\s+\$http_upgrade", block) is not None
          and re.search(r"proxy_set_header\s+Connection\s+\$connection_upgrade", block) is not None
          and re.search(r"proxy_http_version\s+1\.1", code) is not None,
          "nginx.conf: /ws passes Upgrade/Connection headers over HTTP/1.1")
    for directive in ("proxy_read_timeout", "proxy_send_timeout"):
        m = re.search(directive + r"\s+(\S+);", block)
        t = seconds(m.group(1)) if m else 60.0  # nginx default
        check(t > eff.ping and t >= eff.idle,
              f"nginx.conf: /ws {directive} {t:g}s > ping_interval {eff.ping:g}s and "
              f">= idle_timeout {eff.idle:g}s")
    # nginx drops inherited proxy_set_header lines in a location that sets its own, so each
    # proxying location must set X-Forwarded-For itself (tickwire's server.trusted_proxies).
    proxied = [(path, body) for path, body in
               re.findall(r"location\s*=?\s*(\S+)\s*\{(.*?)\}", code, re.S) if "proxy_pass" in body]
    check(proxied != [] and all(
        re.search(r"proxy_set_header\s+X-Forwarded-For\s+\$proxy_add_x_forwarded_for", body)
        for _, body in proxied),
        f"nginx.conf: every proxying location ({', '.join(p for p, _ in proxied)}) sets "
        "X-Forwarded-For $proxy_add_x_forwarded_for")
    m = re.search(r"client_max_body_size\s+(\S+);", code)
    size = nginx_size(m.group(1)) if m else 1 << 20
    check(size == eff.max_body,
          f"nginx.conf: client_max_body_size {size} = http.max_body_bytes {eff.max_body}")
    check(re.search(r"location\s*=?\s*/metrics", code) is None and "proxy_pass" in code,
          "nginx.conf: does not route /metrics (operator endpoints stay on the admin port)")


def by_kind(docs: dict[Path, list], sub: str, name: str) -> dict[str, tuple[Path, dict]]:
    """The objects under deploy/SUB by kind: of several of one kind, the one called NAME."""
    out = {}
    for p, ds in docs.items():
        if p.parent.name == sub:
            for d in ds:
                if isinstance(d, dict) and "kind" in d:
                    if d["kind"] not in out or d.get("metadata", {}).get("name") == name:
                        out[d["kind"]] = (p, d)
    return out


def selects(selector: dict, labels: dict) -> bool:
    return selector.items() <= labels.items()


def check_k8s(docs: dict[Path, list]) -> None:
    k = by_kind(docs, "k8s", "tickwire")
    need = ["Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
            "ServiceMonitor", "Kustomization"]
    if not check(all(n in k for n in need), f"k8s: manifests present ({', '.join(need)})",
                 f"found {sorted(k)}"):
        return
    kz = k["Kustomization"][1]
    for f in kz.get("resources", []):
        check((DEPLOY / "k8s" / f).exists(), f"kustomization: resource {f} exists")
    check("hpa.yaml" in kz.get("resources", []),
          "kustomization: hpa.yaml is applied (several replicas, sharing the Redis broker)")
    gen = {g["name"]: g for g in kz.get("configMapGenerator", [])}
    dep = k["Deployment"][1]
    hpa = k["HorizontalPodAutoscaler"][1]
    lo, hi = hpa["spec"].get("minReplicas", 1), hpa["spec"]["maxReplicas"]
    check(lo >= 2 and hi >= lo,
          f"k8s: HPA runs {lo} to {hi} replicas (at least 2: one can drain while another serves)")
    check(dep["spec"].get("replicas") is None,
          f"k8s: Deployment sets no replicas (the HPA owns the count; got "
          f"{dep['spec'].get('replicas')})")
    pdb = k["PodDisruptionBudget"][1]["spec"]
    mu, ma = pdb.get("maxUnavailable"), pdb.get("minAvailable")
    check((isinstance(mu, int) and 1 <= mu < lo) or (isinstance(ma, int) and 1 <= ma < lo),
          f"k8s: PodDisruptionBudget (maxUnavailable {mu}, minAvailable {ma}) allows an eviction "
          f"and keeps a pod serving at minReplicas {lo}")
    pod = dep["spec"]["template"]
    c = pod["spec"]["containers"][0]
    pod_labels = pod["metadata"].get("labels", {})
    args = c.get("args", [])
    cfg_path = args[args.index("--config") + 1] if "--config" in args else None
    check(args[:1] == ["serve"] and cfg_path is not None,
          f"k8s: container runs `serve --config {cfg_path}`")
    mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
    vols = {v["name"]: v for v in pod["spec"].get("volumes", [])}
    cm_file = None
    for name, v in vols.items():
        cm = v.get("configMap", {}).get("name")
        if cm and cfg_path and name in mounts:
            in_gen = cm in gen
            files = gen.get(cm, {}).get("files", [])
            target = [f for f in files if f"{mounts[name]['mountPath']}/{Path(f).name}" == cfg_path]
            if check(in_gen and bool(target),
                     f"k8s: --config {cfg_path} is file {target[:1]} of the generated ConfigMap {cm}"):
                cm_file = DEPLOY / "k8s" / target[0]
    env = {e["name"]: str(e["value"]) for e in c.get("env", []) if "value" in e}
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    # Selectors.
    svc = k["Service"][1]
    for what, sel in (("Deployment", dep["spec"]["selector"]["matchLabels"]),
                      ("Service", svc["spec"]["selector"]),
                      ("PodDisruptionBudget", k["PodDisruptionBudget"][1]["spec"]["selector"]["matchLabels"])):
        check(sel.items() <= pod_labels.items(), f"k8s: {what} selector {sel} matches the pod labels")
    sm = k["ServiceMonitor"][1]
    check(sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"].get("labels", {}).items(),
          "k8s: ServiceMonitor selector matches the Service labels")
    check(hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
          and any(m.get("resource", {}).get("name") == "cpu" for m in hpa["spec"]["metrics"]),
          "k8s: HPA scales the Deployment on CPU")
    check(svc["metadata"]["name"] == "tickwire",
          "k8s: Service is named tickwire (the ServiceMonitor's job label, used by alerts.yml)")
    # The demo Redis (redis.yaml): its own pods, which no tickwire selector picks up.
    redis = [d for p, ds in docs.items() if p.parent.name == "k8s" for d in ds
             if isinstance(d, dict) and d.get("metadata", {}).get("name") == "redis"]
    r_dep = next((d for d in redis if d.get("kind") == "Deployment"), None)
    r_svc = next((d for d in redis if d.get("kind") == "Service"), None)
    r_ports: dict = {}
    r_svc_ports: dict = {}
    if "redis.yaml" in kz.get("resources", []) and check(
            r_dep is not None and r_svc is not None, "k8s: redis.yaml has a Deployment and a "
            "Service named redis"):
        r_labels = r_dep["spec"]["template"]["metadata"].get("labels", {})
        check(r_dep["spec"].get("replicas", 1) == 1
              and r_dep["spec"].get("strategy", {}).get("type") == "Recreate",
              "k8s: one Redis pod, replaced with Recreate (never two separate brokers at once)")
        check(selects(r_svc["spec"]["selector"], r_labels)
              and selects(r_dep["spec"]["selector"]["matchLabels"], r_labels),
              "k8s: redis Service and Deployment selectors match the redis pod labels")
        check(not any(selects(sel, r_labels) for sel in (
                  dep["spec"]["selector"]["matchLabels"], svc["spec"]["selector"],
                  pdb["selector"]["matchLabels"], sm["spec"]["selector"]["matchLabels"])),
              "k8s: no tickwire selector (Deployment, Service, PDB, ServiceMonitor) matches "
              "the redis pods")
        r_ports = {p["name"]: p["containerPort"]
                   for p in r_dep["spec"]["template"]["spec"]["containers"][0].get("ports", [])}
        r_svc_ports = {p["port"]: p["targetPort"] for p in r_svc["spec"]["ports"]}
    else:
        r_svc = None

    if not BIN.exists() or cm_file is None:
        return
    eff = settings_of("k8s container (ConfigMap file + env)", env, cm_file)
    if not eff:
        return
    check(eff.broker == "redis", f"k8s: broker.kind = redis ({eff.broker}): the replicas share "
          "one broker")
    check(not eff.feed, "k8s: the demo feed is off (on, every replica would publish its own "
          "prices on the same topics)")
    url = env.get("TICKWIRE__BROKER__REDIS_URL") or \
        tomllib.loads(cm_file.read_text()).get("broker", {}).get("redis_url", "")
    hp = redis_host_port(url)
    if r_svc is not None:
        target = r_svc_ports.get(hp[1]) if hp else None
        check(hp is not None and hp[0] == r_svc["metadata"]["name"]
              and r_ports.get(target, target) in r_ports.values(),
              f"k8s: broker.redis_url {url} is the redis Service's port {hp and hp[1]} "
              f"(container port {r_ports.get(target, target)})")
    else:
        check(hp is not None, f"k8s: broker.redis_url {url} names a Redis host and port")

    def port_number(ref) -> int | None:
        return ports.get(ref) if isinstance(ref, str) else ref

    check(ports.get("http") == eff.server_port,
          f"k8s: containerPort http {ports.get('http')} = server.listen port {eff.server_port}")
    if eff.admin_port:
        check(ports.get("admin") == eff.admin_port,
              f"k8s: containerPort admin {ports.get('admin')} = admin.listen port {eff.admin_port}")
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = c.get(probe, {}).get("httpGet", {})
        n = port_number(get.get("port"))
        check(get.get("path") == path and n == eff.ops_port,
              f"k8s: {probe} GET {get.get('path')} on port {get.get('port')} ({n}); "
              f"{path} is served on {eff.ops_port}")
    pre = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    pre_s = float(pre[1]) if pre[:1] == ["sleep"] else 0.0
    grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
    check(grace > eff.shutdown + pre_s,
          f"k8s: terminationGracePeriodSeconds {grace} > preStop {pre_s:g}s + "
          f"shutdown_timeout {eff.shutdown:g}s")
    svc_ports = {p["name"]: p for p in svc["spec"]["ports"]}
    for name, p in svc_ports.items():
        check(port_number(p["targetPort"]) is not None,
              f"k8s: Service port {name} targets container port {p['targetPort']} "
              f"({port_number(p['targetPort'])})")
    for ep in sm["spec"]["endpoints"]:
        sp = svc_ports.get(ep.get("port"))
        n = port_number(sp["targetPort"]) if sp else None
        check(n == eff.ops_port and ep.get("path", "/metrics") == "/metrics",
              f"k8s: ServiceMonitor scrapes Service port {ep.get('port')} ({n}) /metrics, "
              f"served on {eff.ops_port}")
    ann = pod["metadata"].get("annotations", {})
    if "prometheus.io/port" in ann:
        check(int(ann["prometheus.io/port"]) == eff.ops_port,
              f"k8s: prometheus.io/port annotation {ann['prometheus.io/port']} = {eff.ops_port}")
    ing = docs.get(DEPLOY / "k8s" / "ingress.yaml")
    if ing:
        ing = ing[0]
        backends = [p["backend"]["service"]["port"] for r in ing["spec"]["rules"]
                    for p in r["http"]["paths"]]
        check(all(svc_ports.get(b.get("name"), {}).get("targetPort") == "http" for b in backends),
              "k8s: Ingress routes only to the Service's http port")
        a = ing["metadata"].get("annotations", {})
        t = float(a.get("nginx.ingress.kubernetes.io/proxy-read-timeout", 60))
        check(t > eff.ping and t >= eff.idle,
              f"k8s: Ingress proxy-read-timeout {t:g}s > ping_interval, >= idle_timeout")
    check(eff.max_connections < 1 << 20,
          f"k8s: max_connections {eff.max_connections} below the usual runtime nofile limit")


def check_systemd() -> None:
    unit = (DEPLOY / "systemd" / "tickwire.service").read_text()
    kv: dict[str, list[str]] = {}
    for line in unit.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            k_, _, v = line.partition("=")
            kv.setdefault(k_, []).append(v)
    exec_start = kv.get("ExecStart", [""])[0]
    check(exec_start == "/usr/local/bin/tickwire serve --config /etc/tickwire/tickwire.toml",
          f"systemd: ExecStart={exec_start}")
    check(kv.get("KillSignal") == ["SIGTERM"], "systemd: KillSignal=SIGTERM")
    check(all(f.startswith("-") for f in kv.get("EnvironmentFile", [])),
          f"systemd: EnvironmentFile={', '.join(kv.get('EnvironmentFile', ['(none)']))} is "
          "optional (the unit starts without it)")
    for key in ("NoNewPrivileges", "ProtectSystem", "PrivateTmp", "CapabilityBoundingSet",
                "RestrictAddressFamilies", "LimitNOFILE", "TimeoutStopSec"):
        check(key in kv, f"systemd: {key}={kv.get(key, ['(missing)'])[-1]}")
    if not BIN.exists():
        return
    env = {}
    for e in kv.get("Environment", []):
        for tok in shlex.split(e):
            k_, _, v = tok.partition("=")
            env[k_] = v
    eff = settings_of("systemd (deploy/systemd/tickwire.toml + Environment=)",
                      {k_: v for k_, v in env.items() if k_.startswith("TICKWIRE__")},
                      DEPLOY / "systemd" / "tickwire.toml")
    if not eff:
        return
    stop = seconds(kv["TimeoutStopSec"][-1])
    check(stop > eff.shutdown,
          f"systemd: TimeoutStopSec {stop:g}s > server.shutdown_timeout {eff.shutdown:g}s")
    nofile = int(kv["LimitNOFILE"][-1].split(":")[-1])
    check(nofile > eff.max_connections,
          f"systemd: LimitNOFILE {nofile} > server.max_connections {eff.max_connections}")


def check_tomls() -> None:
    for p in sorted(DEPLOY.rglob("*.toml")):
        r = check_config({}, p)
        check(r.returncode == 0, f"TOML: tickwire check-config --config {rel(p)} exits 0",
              f"exit {r.returncode}: {r.stderr.strip()}")


# ---------------------------------------------------------------------------------------------
# Metric names.

def alert_metric_names(docs: dict[Path, list]) -> set[str]:
    rules = docs.get(DEPLOY / "prometheus" / "alerts.yml", [{}])[0]
    names = set()
    for g in rules.get("groups", []):
        for r in g.get("rules", []):
            names |= set(re.findall(r"(?<![\w:])((?:tickwire|process)_[a-z_]+)", r.get("expr", "")))
    return names


def exported_static() -> set[str]:
    src = (ROOT / "src" / "metrics.rs").read_text()
    names = set(re.findall(r'"(tickwire_[a-z_]+)"', src))
    hist = set(re.findall(r'HistogramOpts::new\(\s*"(tickwire_[a-z_]+)"', src)) | \
        set(re.findall(r'histogram\(\s*"(tickwire_[a-z_]+)"', src))
    for h in hist:
        names |= {h + "_bucket", h + "_sum", h + "_count"}
    # The prometheus crate's process collector (Linux).
    names |= {"process_cpu_seconds_total", "process_open_fds", "process_max_fds",
              "process_virtual_memory_bytes", "process_resident_memory_bytes",
              "process_start_time_seconds", "process_threads"}
    return names


# The Redis broker's metrics (issue #8), fixed before the server exports them. While no source
# file names one, alerts on them are reported as pending (SKIP), not failed; as soon as
# src/metrics.rs declares them they are checked like every other name. (The smoke run uses the
# memory broker, which may leave the Redis-only series out of /metrics: declared names count.)
BROKER_METRICS = {"tickwire_broker_up", "tickwire_broker_reconnects_total",
                  "tickwire_broker_publish_duration_seconds_bucket",
                  "tickwire_broker_publish_duration_seconds_sum",
                  "tickwire_broker_publish_duration_seconds_count"}


def check_alert_metrics(docs: dict[Path, list], exported: set[str] | None) -> None:
    used = alert_metric_names(docs)
    if not used:
        bad("alerts.yml: no metric names found (the scan is broken)")
        return
    declared = exported_static()
    source = "scraped from the smoke run's /metrics"
    if exported is None:
        exported, source = declared, "static list from src/metrics.rs"
    exported = exported | (declared & BROKER_METRICS)
    pending = sorted((used & BROKER_METRICS) - exported)
    if pending:
        skip(f"alerts.yml queries {', '.join(pending)}: not exported by this server yet (the "
             f"Redis broker, issue #8); checked once src/metrics.rs declares them")
    used -= set(pending)
    missing = sorted(used - exported)
    check(not missing, f"alerts.yml queries {len(used)} metric names, all exported ({source}): "
          f"{', '.join(sorted(used))}", f"not exported: {missing}")


def check_alert_tests(docs: dict[Path, list]) -> None:
    """Every alert has a promtool test case in which it fires."""
    rules = docs.get(DEPLOY / "prometheus" / "alerts.yml", [{}])[0]
    alerts = {r["alert"] for g in rules.get("groups", []) for r in g.get("rules", [])
              if "alert" in r}
    tests = docs.get(DEPLOY / "prometheus" / "alerts_test.yml", [{}])[0]
    fired = {a["alertname"] for tc in tests.get("tests", []) for a in tc.get("alert_rule_test", [])
             if a.get("exp_alerts")}
    check(bool(alerts) and alerts <= fired,
          f"alerts_test.yml: each of the {len(alerts)} alerts fires in a test case",
          f"never fires: {sorted(alerts - fired)}")


# ---------------------------------------------------------------------------------------------
# Smoke run.

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def ws_open(port: int) -> tuple[socket.socket, bytes]:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError("closed during the handshake")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(head.split(b"\r\n")[0].decode())
    return s, head.split(b"\r\n\r\n", 1)[1]


def ws_wait_close(s: socket.socket, buf: bytes, timeout: float) -> int | None:
    """Reads frames (after `buf`, already received) until a close frame; answers it and returns
    its code."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        while len(buf) >= 2:
            op, n = buf[0] & 0x0F, buf[1] & 0x7F
            hdr = 2 + (2 if n == 126 else 8 if n == 127 else 0)
            if len(buf) < hdr:
                break
            if n >= 126:
                n = int.from_bytes(buf[2:hdr], "big")
            if len(buf) < hdr + n:
                break
            payload, buf = buf[hdr:hdr + n], buf[hdr + n:]
            if op == 8:
                mask = os.urandom(4)
                body = payload[:2]
                s.sendall(bytes([0x88, 0x80 | len(body)]) + mask +
                          bytes(b ^ mask[i % 4] for i, b in enumerate(body)))
                return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
        s.settimeout(max(0.05, deadline - time.time()))
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            break
        if not chunk:
            break
        buf += chunk
    return None


def smoke(healthcheck: list[str] | None) -> set[str] | None:
    cfg = DEPLOY / "k8s" / "tickwire.toml"
    main, admin = free_port(), free_port()
    # The memory broker: the smoke run checks probes, scraping and the drain, which need no
    # Redis (and a Redis-backed node would stay unready without one).
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "TICKWIRE__SERVER__LISTEN": f"127.0.0.1:{main}",
           "TICKWIRE__ADMIN__LISTEN": f"127.0.0.1:{admin}",
           "TICKWIRE__BROKER__KIND": "memory"}
    log = SCRATCH / "smoke.log"
    what = (f"smoke: `tickwire serve --config {rel(cfg)}` (listeners moved to "
            f"127.0.0.1:{main}/{admin}, broker.kind = memory)")
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(BIN), "serve", "--config", str(cfg)], env=env, cwd=SCRATCH,
                                stdout=out, stderr=subprocess.STDOUT)
    exported = None
    try:
        deadline = time.time() + 15
        up = False
        while time.time() < deadline and proc.poll() is None:
            try:
                up = http_get(admin, "/healthz")[0] == 200
            except OSError:
                pass
            if up:
                break
            time.sleep(0.05)
        if not check(up, f"{what}: admin /healthz answers 200",
                     f"exit {proc.poll()}; log: {log.read_text()[-2000:]}"):
            return None
        check(http_get(admin, "/readyz")[0] == 200, "smoke: admin /readyz 200 while serving")
        check(http_get(main, "/healthz")[0] == 404,
              "smoke: main port answers /healthz with 404 when admin.listen is set "
              "(probes must use the admin port)")
        status, body = http_get(admin, "/metrics")
        exported = set(re.findall(r"(?m)^([a-z_:]+)(?:\{| )", body))
        check(status == 200 and "tickwire_connections" in exported,
              f"smoke: admin /metrics 200 with {len(exported)} series names")
        logged = log.read_text()
        m = re.search(r'"limit":(\d+)[^\n]*open files limit|open files limit[^\n]*"limit":(\d+)', logged)
        check(m is not None, "smoke: the server logs its open files limit at start",
              logged[-1000:])
        if m:
            fds = int(m.group(1) or m.group(2))
            print(f"      open files limit here: {fds}", flush=True)
        if healthcheck:
            hc_env = {"PATH": env["PATH"]}
            good = subprocess.run(healthcheck, env={**hc_env, "HEALTHCHECK_PORT": str(admin)},
                                  capture_output=True, timeout=10).returncode
            wrong = subprocess.run(healthcheck, env={**hc_env, "HEALTHCHECK_PORT": str(main)},
                                   capture_output=True, timeout=10).returncode
            check(good == 0 and wrong != 0,
                  f"smoke: the Dockerfile HEALTHCHECK command exits 0 against /healthz "
                  f"(admin port) and {wrong} against a 404 (main port)")
        # Drain: a WebSocket client stays connected; SIGTERM must turn /readyz 503 on the admin
        # port, close the client with 1001, and exit 0.
        ws, pending = ws_open(main)
        t0 = time.time()
        proc.send_signal(signal.SIGTERM)
        ready = 200
        while time.time() - t0 < 3:
            try:
                ready = http_get(admin, "/readyz")[0]
            except OSError:
                break
            if ready == 503:
                break
            time.sleep(0.02)
        check(ready == 503, f"smoke: after SIGTERM, admin /readyz answers {ready} (want 503)")
        code = ws_wait_close(ws, pending, 15)
        ws.close()
        check(code == 1001, f"smoke: the WebSocket client is closed with {code} (want 1001)")
        try:
            rc = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            rc = None
        check(rc == 0, f"smoke: exit status {rc} after SIGTERM, in {time.time() - t0:.2f}s "
              f"(want 0 within server.shutdown_timeout)")
    except Exception as e:  # noqa: BLE001 - any failure of the smoke run is a check failure
        bad(f"smoke: {type(e).__name__}: {e}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return exported


def main() -> int:
    os.chdir(ROOT)
    docs = load_yaml_files()
    have_bin = BIN.exists()
    if not have_bin:
        msg = f"{rel(BIN)} not found (build it with `cargo build`, or set TICKWIRE_BIN)"
        if IN_CI:
            bad(f"binary: {msg}")
        else:
            skip(f"binary-based checks (check-config of env keys and TOML files, effective "
                 f"ports and timeouts, smoke run): {msg}")
    if have_bin:
        check_tomls()
        if yaml is not None:
            check_env_keys(docs)
        else:
            skip("env keys from Kubernetes env lists (PyYAML missing); text scan only")
            values, _ = env_mentions()
            for name in sorted(values):
                r = check_config({name: sorted(values[name])[0]} if values[name] else {name: "x"})
                check(r.returncode == 0 or (not values[name] and "unknown field" not in r.stderr),
                      f"env key {name} is a valid setting", r.stderr.strip())
    hc, _ = check_dockerfile()
    if yaml is not None:
        check_compose(docs)
        check_k8s(docs)
    else:
        skip("compose, Grafana, Prometheus and Kubernetes consistency checks (PyYAML missing)")
    check_systemd()
    exported = smoke(hc) if have_bin else None
    if yaml is not None:
        check_alert_metrics(docs, exported)
        check_alert_tests(docs)
    else:
        skip("metric names used by alerts.yml (PyYAML missing)")
    return 1 if failures else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        shutil.rmtree(SCRATCH, ignore_errors=True)
