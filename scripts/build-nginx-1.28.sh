#!/usr/bin/env bash
# Builds nginx 1.28 with lua-nginx-module and ngx_devel_kit as dynamic modules, from the registries
# a build machine can reach (no nginx.org, no GitHub):
#   - nginx source: the nginx-src crate on crates.io (it carries the nginx source tree);
#   - lua-nginx-module and ndk: Debian's source packages (orig tarball + Debian's patches);
#   - LuaJIT (OpenResty's branch), PCRE, OpenSSL, zlib: Debian packages.
# Result:
#   build/nginx-1.28/sbin/nginx, build/nginx-1.28/modules/{ndk_http_module,ngx_http_lua_module}.so
#   build/nginx-1.28-src        the configured tree (objs/), for NGINX_BUILD_DIR=build/nginx-1.28-src/objs
#   build/nginx-1.28-dl         downloads: the throwaway cargo project, Debian source packages
# Idempotent: a rerun with nothing changed only checks packages and timestamps.
#
# usage: build-nginx-1.28.sh        (env NGINX_SRC_CRATE overrides the nginx-src version requirement)
set -euo pipefail
shopt -s inherit_errexit   # also stop on errors inside $(...)

root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/scripts/lib/packages.sh"
script=$root/scripts/$(basename "$0")
prefix=$root/build/nginx-1.28
tree=$root/build/nginx-1.28-src
dl=$root/build/nginx-1.28-dl

# nginx-src 1.28.5+1.28.3 is the newest 1.28 one and carries nginx 1.28.3; pinned for reproducibility.
nginx_src_crate=${NGINX_SRC_CRATE:-=1.28.5}

packages=(
    gcc make libc6-dev patch xz-utils         # compiling nginx; unpacking/patching Debian sources
    libluajit2-5.1-dev                        # OpenResty's LuaJIT, as Debian's lua module uses
    libpcre3-dev                              # lua-nginx-module 0.10.23 uses the PCRE1 API
    libpcre2-dev libssl-dev zlib1g-dev        # nginx core: regex, http_ssl, gzip
    lua-resty-core lua-cjson                  # run time: resty.core and cjson for the Lua code
                                              # (lua-resty-core drags in Debian's nginx 1.22, as install-deps does)
)

# The configure arguments. Of Debian's `nginx -V`, what matters for modules: --with-compat (module
# ABI padding), --with-threads and --with-http_ssl_module/--with-http_v2_module (they change structs
# modules see), --with-debug and --with-pcre-jit (same behaviour as the 1.22 build we test with),
# --with-http_stub_status_module (the benchmarks' backends count connections with it).
# lua-nginx-module 0.10.23 calls PCRE1 (pcre_malloc...) while nginx 1.28 itself uses PCRE2, as in
# Debian's 1.22 packages: link libpcre explicitly, else loading the lua module fails with
# "undefined symbol: pcre_malloc".
configure_args=(
    --prefix="$prefix"
    --with-compat --with-threads --with-debug --with-pcre-jit
    --with-http_ssl_module --with-http_v2_module --with-http_stub_status_module
    --with-cc-opt='-g -O2 -fstack-protector-strong -Wformat -Werror=format-security -D_FORTIFY_SOURCE=2 -fPIC'
    --with-ld-opt='-Wl,-z,relro -Wl,-z,now -fPIC -lpcre'
)
export LUAJIT_INC=/usr/include/luajit-2.1
export LUAJIT_LIB=/usr/lib/x86_64-linux-gnu

log() { echo "nginx-1.28: $*"; }

# What the build was made from; a change of any of it forces a rebuild.
stamp_text() {
    printf '%s\n' "nginx-src $nginx_src_crate" "LUAJIT_INC=$LUAJIT_INC LUAJIT_LIB=$LUAJIT_LIB" \
        "${configure_args[@]}"
}

up_to_date() {
    local f
    for f in "$prefix/sbin/nginx" "$prefix/modules/ndk_http_module.so" \
        "$prefix/modules/ngx_http_lua_module.so" "$tree/objs/ngx_auto_config.h" \
        "$tree/objs/Makefile" "$prefix/.build-stamp"; do
        [ -f "$f" ] && [ "$f" -nt "$script" ] || return 1
    done
    # Newer Debian sources downloaded since (a security update) also force a rebuild.
    for f in "$dl"/deb/*; do
        [ -e "$f" ] || continue
        [ "$prefix/sbin/nginx" -nt "$f" ] || return 1
    done
    [ "$(cat "$prefix/.build-stamp")" = "$(stamp_text)" ]
}

# Prints the directory of the nginx source tree inside the nginx-src crate, fetched the ordinary
# way: a throwaway cargo project that depends on it (its own [workspace], so that the project's
# workspace above build/ does not claim it), `cargo fetch`, then cargo metadata for its path in
# the registry cache.
fetch_nginx_src() {
    local proj=$dl/fetch-nginx-src manifest
    mkdir -p "$proj"
    cat >"$proj/Cargo.toml" <<EOF
[package]
name = "fetch-nginx-src"
version = "0.0.0"
edition = "2021"
publish = false

[lib]
path = "lib.rs"

[dependencies]
nginx-src = "$nginx_src_crate"

[workspace]
EOF
    : >"$proj/lib.rs"
    (cd "$proj" && cargo fetch -q --target x86_64-unknown-linux-gnu >&2)
    manifest=$(cd "$proj" && cargo metadata -q --offline --format-version 1 \
        --filter-platform x86_64-unknown-linux-gnu |
        grep -o '"manifest_path":"[^"]*/nginx-src-[^"/]*/Cargo.toml"' | head -n 1 |
        sed 's/^"manifest_path":"//; s/"$//')
    if [ -z "$manifest" ] || [ ! -f "$(dirname "$manifest")/nginx/auto/configure" ]; then
        echo "nginx-1.28: nginx-src $nginx_src_crate: no nginx source tree found (manifest: '$manifest')" >&2
        exit 1
    fi
    dirname "$manifest"
}

# Whether file $1 is there with hash $2 ("SHA256:<hex>", as `apt-get source --print-uris` gives).
have_file() {
    [ -f "$1" ] || return 1
    case $2 in
    SHA256:*) [ "$(sha256sum "$1" | cut -d' ' -f1)" = "${2#SHA256:}" ] ;;
    *) true ;;
    esac
}

# Downloads one Debian source package into $dl/deb (one package per call: one failure would abort
# them all) and lists its files in $dl/deb/<pkg>.files. `apt-get source --download-only` first;
# if it fails (the debian tarball of a security update has been seen to 404), fetch each file of
# `--print-uris` with apt's own downloader, checking its hash, where only the orig tarball is
# indispensable. apt's downloader would run as _apt, which may not be able to write under build/
# (it then warns and falls back to root): download as root from the start.
apt_as_root=(-o APT::Sandbox::User=root)
fetch_deb_source() {
    local pkg=$1 uris uri file hash incomplete=0
    mkdir -p "$dl/deb"
    uris=$(apt-get "${apt_as_root[@]}" source -qq --print-uris "$pkg" 2>/dev/null | grep "^'" || true)
    if [ -z "$uris" ]; then
        echo "nginx-1.28: apt-get source $pkg: no source package (deb-src entries missing?)" >&2
        exit 1
    fi
    while read -r _ file _ hash; do
        echo "$file"
        have_file "$dl/deb/$file" "$hash" || incomplete=1
    done <<<"$uris" >"$dl/deb/$pkg.files"
    [ "$incomplete" = 0 ] && return 0

    (cd "$dl/deb" && apt-get "${apt_as_root[@]}" source -qq --download-only "$pkg" >/dev/null 2>&1) && return 0
    log "apt-get source --download-only $pkg failed; fetching its files one by one"
    while read -r uri file _ hash; do
        uri=${uri//\'/}
        have_file "$dl/deb/$file" "$hash" && continue
        rm -f "$dl/deb/$file"
        if ! /usr/lib/apt/apt-helper "${apt_as_root[@]}" -qq download-file "$uri" "$dl/deb/$file" "$hash" >/dev/null; then
            case $file in
            *.orig.tar.*) echo "nginx-1.28: cannot download $uri" >&2; exit 1 ;;
            *) log "warning: cannot download $file (continuing without it)" ;;
            esac
        fi
    done <<<"$uris"
}

# Unpacks a downloaded source package into $dl/src: the orig tarball, then Debian's quilt patches
# from the debian tarball when there is one. Prints the unpacked directory.
unpack_deb_source() {
    local pkg=$1 orig debian dir tmp patch
    orig=$dl/deb/$(grep '\.orig\.tar\.' "$dl/deb/$pkg.files")
    debian=$dl/deb/$(grep '\.debian\.tar\.' "$dl/deb/$pkg.files" || true)
    # The orig tarball holds one top directory (e.g. lua-nginx-module-0.10.23): unpack it aside first.
    mkdir -p "$dl/src"
    tmp=$(mktemp -d "$dl/src/.unpack.XXXXXX")
    tar xf "$orig" -C "$tmp"
    dir=$dl/src/$(cd "$tmp" && echo *)
    rm -rf "$dir"
    mv "$tmp"/* "$dir"
    rmdir "$tmp"
    if [ -f "$debian" ]; then
        tar xf "$debian" -C "$dir"
        if [ -f "$dir/debian/patches/series" ]; then
            while read -r patch _; do
                case $patch in '' | '#'*) continue ;; esac
                patch -d "$dir" -p1 -s --no-backup-if-mismatch <"$dir/debian/patches/$patch" >&2
            done <"$dir/debian/patches/series"
        fi
    else
        log "warning: no Debian patches for $pkg (debian tarball missing): building upstream $orig" >&2
    fi
    echo "$dir"
}

install_missing nginx-1.28 "${packages[@]}"
if up_to_date; then
    log "up to date: $prefix/sbin/nginx"
    exit 0
fi

started=$(date +%s)
"$root/scripts/enable-deb-src.sh"

log "fetching the nginx-src crate ($nginx_src_crate)"
crate_dir=$(fetch_nginx_src)
log "fetching lua-nginx-module and ngx_devel_kit from Debian's source archive"
fetch_deb_source libnginx-mod-http-lua
fetch_deb_source libnginx-mod-http-ndk
lua_dir=$(unpack_deb_source libnginx-mod-http-lua)
ndk_dir=$(unpack_deb_source libnginx-mod-http-ndk)

# A fresh copy each time: configure writes objs/ into the tree, and the registry copy stays pristine.
rm -rf "$tree" "$prefix"
cp -r "$crate_dir/nginx" "$tree"
cd "$tree"
log "configuring $(sed -n 's/^#define NGINX_VERSION *"\(.*\)"/\1/p' src/core/nginx.h) in $tree"
# ndk before lua: the lua module needs ndk's symbols, and load_module order follows.
if ! auto/configure "${configure_args[@]}" \
    --add-dynamic-module="$ndk_dir" --add-dynamic-module="$lua_dir" >configure.log 2>&1; then
    tail -n 30 configure.log >&2
    exit 1
fi
log "compiling"
if ! make -j"$(nproc)" >make.log 2>&1; then
    grep -m 30 -E 'error|Error' make.log >&2 || tail -n 30 make.log >&2
    exit 1
fi
make install >>make.log 2>&1
stamp_text >"$prefix/.build-stamp"
log "built $prefix/sbin/nginx ($(( $(date +%s) - started )) s): $("$prefix/sbin/nginx" -v 2>&1)"
