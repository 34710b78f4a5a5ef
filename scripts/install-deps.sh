#!/usr/bin/env bash
# Installs, from Debian's archive, everything the module's build and tests need on Debian 12.
# Idempotent: packages already present are not downloaded again.
set -euo pipefail
. "$(dirname "$0")/lib/packages.sh"

packages=(
    nginx-core nginx-dev              # the nginx we build against and test with (1.22.1)
    libnginx-mod-http-lua libnginx-mod-http-ndk lua-resty-core lua-cjson
    libclang-dev                      # bindgen, for the nginx-sys bindings
    curl                              # the demo's instructions
)

# Debian's nginx package starts a system nginx on port 80 where it can; the project never needs it.
install_missing install-deps "${packages[@]}"
