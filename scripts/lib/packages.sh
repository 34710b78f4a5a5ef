# Sourced by the scripts that need Debian packages: install_missing <who> <package>...
# Installs those of the packages that are not installed yet (none downloaded twice), as root;
# otherwise says which are missing and exits.
install_missing() {
    local who=$1 missing=() p
    shift
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "$who: missing packages: ${missing[*]}; run as root (or install them) first" >&2
        exit 1
    fi
    echo "$who: installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
