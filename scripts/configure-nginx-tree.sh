#!/usr/bin/env bash
# Prepares an nginx build tree that matches an installed nginx binary exactly, so that the bindings
# (and the module's signature) match it: copies nginx-dev's header tree and runs its configure with
# the binary's own `nginx -V` arguments. Nothing is compiled.
#
# usage: configure-nginx-tree.sh <nginx binary> <source tree> <output dir>
set -euo pipefail

nginx_bin=${1:?nginx binary}
src=${2:?source tree}
out=${3:?output dir}

if [ -f "$out/objs/ngx_auto_config.h" ] && [ "$out/objs/ngx_auto_config.h" -nt "$nginx_bin" ]; then
    exit 0
fi

args=$("$nginx_bin" -V 2>&1 | sed -n 's/^configure arguments: //p')
rm -rf "$out"
mkdir -p "$(dirname "$out")"
cp -r "$src" "$out"
cd "$out"
# The arguments carry quoted flags (--with-cc-opt='...'): let the shell split them as nginx did.
eval "./configure $args" >configure.log 2>&1 || { tail -20 configure.log >&2; exit 1; }
echo "configured $out for $("$nginx_bin" -v 2>&1)"
