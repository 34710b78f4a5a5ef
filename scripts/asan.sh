#!/usr/bin/env bash
# `make asan`: builds the module with AddressSanitizer (nightly -Zsanitizer=address) and runs the
# integration tests — the API, bad-input and churn tests among them — with nginx started under
# the ASan runtime (LD_PRELOAD, since Debian's nginx is not instrumented). Fails on any ASan
# report, or on any test failure.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

libasan=$(ls /usr/lib/x86_64-linux-gnu/libasan.so.* 2>/dev/null | sort | head -n 1)
if [ -z "$libasan" ]; then
    echo "asan: no libasan in /usr/lib/x86_64-linux-gnu (apt-get install libasan8)" >&2
    exit 1
fi
if ! rustup toolchain list | grep -q '^nightly'; then
    echo "asan: a nightly Rust toolchain is needed (-Zsanitizer is unstable)" >&2
    exit 1
fi

target_dir=$root/target/asan
RUSTFLAGS="-Zsanitizer=address" CARGO_TARGET_DIR=$target_dir \
    cargo +nightly build --release -p ngx-http-lua-dynamic-upstream \
    --target x86_64-unknown-linux-gnu
module=$root/build/asan/ngx_http_lua_dynamic_upstream_module.so
mkdir -p "$(dirname "$module")"
# Replaced by rename: a running nginx may have the old file mapped.
cp "$target_dir/x86_64-unknown-linux-gnu/release/libngx_http_lua_dynamic_upstream_module.so" "$module.tmp"
mv -f "$module.tmp" "$module"

# Reports go to files: the workers' stderr is not the tests'. The workers run as nobody.
reports=$(mktemp -d /tmp/dynup-asan.XXXXXX)
chmod 1777 "$reports"
trap 'rm -rf "$reports"' EXIT

status=0
DYNUP_MODULE=$module DYNUP_NGINX_PRELOAD=$libasan \
    ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:log_path=$reports/asan" \
    cargo test --release -p integration-tests -- --test-threads=2 || status=$?

if compgen -G "$reports/asan*" >/dev/null; then
    echo "asan: AddressSanitizer reports:" >&2
    cat "$reports"/asan* >&2
    exit 1
fi
if [ "$status" -ne 0 ]; then
    echo "asan: tests failed under AddressSanitizer (exit $status)" >&2
    exit "$status"
fi
echo "asan: no AddressSanitizer report; all tests passed with the instrumented module"
