#!/usr/bin/env bash
# Installs, from Debian's archive, everything the module's build and tests need on Debian 12.
# Idempotent: packages already present are not downloaded again.
set -euo pipefail

packages=(
    nginx-core nginx-dev              # the nginx we build against and test with (1.22.1)
    libnginx-mod-http-lua libnginx-mod-http-ndk lua-resty-core lua-cjson
    libclang-dev                      # bindgen, for the nginx-sys bindings
    curl                              # the demo's instructions
)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing packages: ${missing[*]}; run as root (or install them) first" >&2
    exit 1
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# Debian's nginx package starts a system nginx on port 80 where it can; the project never needs it.
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
