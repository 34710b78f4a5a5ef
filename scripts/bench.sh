#!/usr/bin/env bash
# make bench: the benchmarks of crates/bench (see docs/benchmarks.md, which they rewrite).
# Installs wrk from Debian's archive if it is missing, builds the bench and runs it against the
# nginx and module given by DYNUP_NGINX and DYNUP_MODULE (Debian's nginx and build/ by default),
# killed after 14 minutes at the latest (it stops itself, cleanly, at 14 as well).
set -euo pipefail
. "$(dirname "$0")/lib/packages.sh"

install_missing bench wrk

cargo="${CARGO:-cargo}"
"$cargo" build --release -p bench
export DYNUP_BENCH_COMMAND="${DYNUP_BENCH_COMMAND:-make bench}"
exec timeout --kill-after=15s 14m target/release/bench
