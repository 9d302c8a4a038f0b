#!/usr/bin/env bash
# Optional: installs the other Pusher servers the harness can run in place of turnout
# (turnout run --server NAME, docs/peers.md), idempotently. Not part of scripts/setup.sh or CI:
# building Sockudo takes about 11 minutes of two cores. A second run only checks the version.
#
#   sockudo 5.2.0   cargo install sockudo --version 5.2.0 --features redis --locked
#                   (needs Rust's cargo and Debian's protobuf-compiler for protoc)
#
# The binary is linked into .tools/bin/, where the harness looks first (after
# TURNOUT_SOCKUDO_BIN). Anything it cannot install is named in a clear error; exit 2.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$repo/.tools/bin"
sockudo_version="5.2.0"
mkdir -p "$tools"

say() { printf '\033[1;34msetup-peers:\033[0m %s\n' "$*"; }
die() { printf '\033[1;31msetup-peers: error:\033[0m %s\n' "$*" >&2; exit 2; }

version_of() { "$1" --version 2>/dev/null | awk '{print $2}'; }

# --- Sockudo -----------------------------------------------------------------------------
cargo_home="${CARGO_HOME:-$HOME/.cargo}"
found=""
for candidate in "$tools/sockudo" "$(command -v sockudo 2>/dev/null || true)" "$cargo_home/bin/sockudo"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] && [ "$(version_of "$candidate")" = "$sockudo_version" ]; then
        found="$(readlink -f "$candidate")"
        break
    fi
done
if [ -z "$found" ]; then
    cargo_bin="$(command -v cargo 2>/dev/null || true)"
    [ -n "$cargo_bin" ] || [ ! -x "$cargo_home/bin/cargo" ] || cargo_bin="$cargo_home/bin/cargo"
    [ -n "$cargo_bin" ] ||
        die "sockudo $sockudo_version is missing and cargo is not installed to build it: install Rust (rustup) or put sockudo $sockudo_version on PATH"
    if ! command -v protoc >/dev/null 2>&1; then
        command -v apt-get >/dev/null 2>&1 ||
            die "building sockudo needs protoc: install protobuf-compiler with your package manager"
        [ "$(id -u)" -eq 0 ] ||
            die "building sockudo needs protoc: run 'sudo apt-get install -y protobuf-compiler' (or rerun this script as root)"
        say "installing Debian package protobuf-compiler (protoc, for Sockudo's build)"
        apt-get update -qq || die "apt-get update failed (needed for protobuf-compiler)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler >/dev/null ||
            die "apt-get could not install protobuf-compiler"
    fi
    say "building sockudo $sockudo_version with cargo install (about 11 minutes on 2 cores)"
    "$cargo_bin" install sockudo --version "$sockudo_version" --features redis --locked ||
        die "cargo install sockudo --version $sockudo_version --features redis --locked failed"
    found="$cargo_home/bin/sockudo"
    [ "$(version_of "$found")" = "$sockudo_version" ] ||
        die "cargo installed $found but it does not report version $sockudo_version"
fi
if [ "$(readlink -f "$tools/sockudo" 2>/dev/null || true)" != "$found" ]; then
    ln -sf "$found" "$tools/sockudo"
fi
say "ready: sockudo $(version_of "$tools/sockudo") at $tools/sockudo"
