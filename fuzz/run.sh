#!/usr/bin/env bash
# Fuzzes the parsers clients reach: protocol::parse_request (and parse_publish), and
# Pattern::parse / matches / covers. Not part of CI: it needs a nightly toolchain and cargo-fuzz.
#
#   rustup toolchain install nightly      # if missing
#   cargo install cargo-fuzz              # builds on stable; running it needs nightly
#   fuzz/run.sh [SECONDS]                 # each target for SECONDS (default 60)
#
# Crashes land in fuzz/artifacts/<target>/; reproduce one with
#   cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<file>
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: no nightly toolchain (rustup toolchain install nightly)" >&2
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: cargo-fuzz is not installed (cargo install cargo-fuzz)" >&2
    exit 1
fi
for target in parse_request patterns; do
    echo "== $target, ${seconds}s"
    cargo +nightly fuzz run "$target" -- -max_total_time="$seconds" -max_len=4096
done
