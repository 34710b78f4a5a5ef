#!/usr/bin/env bash
# make bench: the benchmarks of crates/bench (see docs/benchmarks.md, which they rewrite).
# Installs wrk from Debian's archive if it is missing, builds the bench and runs it against the
# nginx and module given by DYNUP_NGINX and DYNUP_MODULE (Debian's nginx and build/ by default),
# killed after 14 minutes at the latest (it stops itself, cleanly, at 14 as well).
set -euo pipefail

if ! command -v wrk >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "bench: wrk is missing; install it (apt-get install wrk) or run as root" >&2
        exit 1
    fi
    echo "bench: installing wrk"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends wrk >/dev/null
fi

cargo="${CARGO:-cargo}"
"$cargo" build --release -p bench
export DYNUP_BENCH_COMMAND="${DYNUP_BENCH_COMMAND:-make bench}"
exec timeout --kill-after=15s 14m target/release/bench
