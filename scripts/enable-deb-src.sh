#!/usr/bin/env bash
# Adds deb-src entries mirroring the machine's deb entries, so `apt-get source` works
# (nginx 1.22 reference source, lua-nginx-module and ndk for the nginx 1.28 build).
set -euo pipefail
list=/etc/apt/sources.list.d/debian-src.sources
[ -f "$list" ] && exit 0
sed -n '/^Types: deb$/,/^$/p' /etc/apt/sources.list.d/debian.sources | sed 's/^Types: deb$/Types: deb-src/' >"$list"
apt-get update -qq
