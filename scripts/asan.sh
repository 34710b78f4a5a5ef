#!/usr/bin/env bash
# `make asan` / `make asan-1.28`: builds the module with AddressSanitizer (-Zsanitizer=address) and
# runs the integration tests — the API, bad-input and churn tests among them — with nginx started
# under the ASan runtime (LD_PRELOAD, since neither nginx is instrumented). Fails on any ASan
# report, or on any test failure.
#
# usage: asan.sh [1.22|1.28]     (default 1.22)
#   1.22  Debian's nginx ($DYNUP_NGINX, default /usr/sbin/nginx), bindings from
#         $NGINX_BUILD_DIR (the Makefile exports it; else build/nginx-<version>/objs, as
#         `make nginx-tree` makes it); cargo target dir target/asan, module build/asan/.
#   1.28  build/nginx-1.28 (`make nginx-1.28`) with its lua modules, bindings from
#         build/nginx-1.28-src/objs; target dir target/asan-1.28, module build/asan-1.28/.
#
# -Zsanitizer is unstable: the build uses `cargo +nightly` when a nightly toolchain is installed,
# else the stable one with RUSTC_BOOTSTRAP=1 (same flags). DYNUP_ASAN_TOOLCHAIN=nightly|stable
# forces one; DYNUP_ASAN_TARGET_DIR overrides the target dir; DYNUP_ASAN_TESTS selects tests
# (cargo test arguments, e.g. "--test describe"; default all).
set -euo pipefail
# nginx reads NGINX as its inherited listening sockets: never pass one on to the nginx under test.
unset NGINX

root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/scripts/lib/packages.sh"
cd "$root"

build=${1:-1.22}
module_name=ngx_http_lua_dynamic_upstream_module.so
test_env=()
case $build in
1.22)
    nginx=${DYNUP_NGINX:-/usr/sbin/nginx}
    version=$("$nginx" -v 2>&1 | sed -n 's|.*nginx/||p')
    build_dir=${NGINX_BUILD_DIR:-$root/build/nginx-$version/objs}
    target_dir=$root/target/asan
    module=$root/build/asan/$module_name
    ;;
1.28)
    nginx=$root/build/nginx-1.28/sbin/nginx
    # Always this tree's: the Makefile exports the 1.22 tree's NGINX_BUILD_DIR.
    build_dir=$root/build/nginx-1.28-src/objs
    target_dir=$root/target/asan-1.28
    module=$root/build/asan-1.28/$module_name
    test_env=(DYNUP_LUA_MODULES_DIR="$root/build/nginx-1.28/modules"
        DYNUP_LUA_PACKAGE_PATH="/usr/share/lua/5.1/?.lua;;")
    ;;
*)
    echo "asan: unknown build '$build' (1.22 or 1.28)" >&2
    exit 2
    ;;
esac
target_dir=${DYNUP_ASAN_TARGET_DIR:-$target_dir}
for f in "$nginx" "$build_dir/ngx_auto_config.h"; do
    if [ ! -e "$f" ]; then
        echo "asan: $f is missing (make nginx-tree, or make nginx-1.28 for 1.28)" >&2
        exit 1
    fi
done

# The ASan runtime nginx is started with (gcc 12's, which the Rust instrumentation works with).
install_missing asan libasan8
libasan=$(ls /usr/lib/x86_64-linux-gnu/libasan.so.* 2>/dev/null | sort | head -n 1 || true)
if [ -z "$libasan" ]; then
    echo "asan: no libasan in /usr/lib/x86_64-linux-gnu after installing libasan8" >&2
    exit 1
fi

# Whether `cargo +nightly` works without rustup fetching anything.
have_nightly() {
    command -v rustup >/dev/null 2>&1 && rustup toolchain list 2>/dev/null | grep -q '^nightly' &&
        RUSTUP_AUTO_INSTALL=0 cargo +nightly --version >/dev/null 2>&1
}
toolchain=${DYNUP_ASAN_TOOLCHAIN:-}
if [ -z "$toolchain" ]; then
    if have_nightly; then toolchain=nightly; else toolchain=stable; fi
fi
case $toolchain in
nightly) cargo_asan=(cargo +nightly) ;;
stable) cargo_asan=(env RUSTC_BOOTSTRAP=1 cargo) ;;
*)
    echo "asan: DYNUP_ASAN_TOOLCHAIN must be nightly or stable, not '$toolchain'" >&2
    exit 2
    ;;
esac
echo "asan: nginx $build ($nginx), $("${cargo_asan[@]}" --version)$([ "$toolchain" = stable ] && echo ' with RUSTC_BOOTSTRAP=1'), target dir $target_dir"

# --target keeps RUSTFLAGS off the build scripts (bindgen must not be instrumented).
RUSTFLAGS="-Zsanitizer=address" CARGO_TARGET_DIR=$target_dir NGINX_BUILD_DIR=$build_dir \
    "${cargo_asan[@]}" build --release -p ngx-http-lua-dynamic-upstream \
    --target x86_64-unknown-linux-gnu
built=$target_dir/x86_64-unknown-linux-gnu/release/lib${module_name}
# The runtime is not linked into a cdylib: the instrumentation shows as __asan_* imports.
# (Counted, not grep -q: an early exit of grep would fail the pipe under pipefail.)
if [ "$(nm -D "$built" | grep -c '__asan_' || true)" -eq 0 ]; then
    echo "asan: $built has no AddressSanitizer symbols: not instrumented" >&2
    exit 1
fi
mkdir -p "$(dirname "$module")"
# Replaced by rename: a running nginx may have the old file mapped.
cp "$built" "$module.tmp"
mv -f "$module.tmp" "$module"

# Reports go to files: the workers' stderr is not the tests'. The workers run as nobody.
reports=$(mktemp -d /tmp/dynup-asan.XXXXXX)
chmod 1777 "$reports"
trap 'rm -rf "$reports"' EXIT

status=0
# shellcheck disable=SC2086 # DYNUP_ASAN_TESTS is a list of arguments
env "${test_env[@]}" DYNUP_NGINX="$nginx" DYNUP_MODULE="$module" DYNUP_NGINX_PRELOAD="$libasan" \
    ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:log_path=$reports/asan" \
    cargo test --release -p integration-tests --no-fail-fast ${DYNUP_ASAN_TESTS:-} -- --test-threads=2 || status=$?

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
