#!/usr/bin/env bash
# Installs everything turnout needs, idempotently: Debian packages (redis-server, haproxy,
# iptables, chromium), the Toxiproxy server binary, the project virtualenv at .venv/, the npm packages of
# the compatibility tests and of clients/pusher-resume (then its build). A second run does
# nothing but check. Anything it cannot install is named in a clear error and the script
# exits 2.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
tools="$repo/.tools/bin"
toxiproxy_version="v2.12.0"
mkdir -p "$tools"

say() { printf '\033[1;34msetup:\033[0m %s\n' "$*"; }
die() { printf '\033[1;31msetup: error:\033[0m %s\n' "$*" >&2; exit 2; }

# --- Python ------------------------------------------------------------------------------
python_bin=""
for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
        "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
        python_bin="$(command -v "$candidate")"
        break
    fi
done
[ -n "$python_bin" ] || die "Python 3.11 or newer is required (python3.11/python3.12/python3.13 not found on PATH)"

# --- Debian packages ---------------------------------------------------------------------
missing_debs=()
command -v redis-server >/dev/null 2>&1 || missing_debs+=(redis-server)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing_debs+=(haproxy)
# Latency faults on netfilter client links (cluster.client_link_faults) use iptables' NFQUEUE.
command -v iptables-legacy >/dev/null 2>&1 || [ -x /usr/sbin/iptables-legacy ] || missing_debs+=(iptables)
# The browser tests drive Debian's Chromium (tests/clients/); no browser build is downloaded.
[ -x /usr/bin/chromium ] || missing_debs+=(chromium)
if [ "${#missing_debs[@]}" -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 ||
        die "missing ${missing_debs[*]} and apt-get is not available: install them with your package manager"
    if [ "$(id -u)" -ne 0 ]; then
        die "missing Debian packages ${missing_debs[*]}: run 'sudo apt-get install -y ${missing_debs[*]}' (or rerun this script as root)"
    fi
    say "installing Debian packages: ${missing_debs[*]}"
    apt-get update -qq || die "apt-get update failed (needed for ${missing_debs[*]})"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing_debs[@]}" >/dev/null ||
        die "apt-get could not install ${missing_debs[*]}"
    # The Debian package starts a system-wide redis on :6379; turnout starts its own servers.
    if command -v systemctl >/dev/null 2>&1; then systemctl disable --now redis-server >/dev/null 2>&1 || true; fi
fi

# --- Toxiproxy server binary -------------------------------------------------------------
if [ ! -x "$tools/toxiproxy-server" ]; then
    if command -v toxiproxy-server >/dev/null 2>&1; then
        ln -sf "$(command -v toxiproxy-server)" "$tools/toxiproxy-server"
    else
        command -v go >/dev/null 2>&1 ||
            die "toxiproxy-server is missing and Go is not installed to build it: install Go 1.23+ or put toxiproxy-server ($toxiproxy_version) on PATH"
        say "building toxiproxy-server $toxiproxy_version with go install"
        build_dir="$(mktemp -d)"
        GOBIN="$build_dir" go install "github.com/Shopify/toxiproxy/v2/cmd/server@$toxiproxy_version" ||
            die "go install github.com/Shopify/toxiproxy/v2/cmd/server@$toxiproxy_version failed"
        mv "$build_dir/server" "$tools/toxiproxy-server"
        rmdir "$build_dir"
    fi
fi

# --- Python virtualenv -------------------------------------------------------------------
stamp=".venv/.turnout-installed"
want="$(cat pyproject.toml | sha256sum | cut -d' ' -f1) $($python_bin -c 'import sys; print(sys.version)' | head -1 | tr ' ' _)"
if [ ! -x .venv/bin/python ]; then
    say "creating .venv with $python_bin"
    "$python_bin" -m venv .venv || die "could not create .venv (is the python venv module installed? Debian: python3-venv)"
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    say "installing Python packages into .venv"
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null || die "pip upgrade failed"
    .venv/bin/python -m pip install -q -e ".[dev]" || die "pip install -e .[dev] failed (see the output above)"
    echo "$want" >"$stamp"
fi

# --- npm packages for the compatibility tests ---------------------------------------------
if [ -f tests/compat/package.json ]; then
    command -v node >/dev/null 2>&1 || die "node is missing: the pusher-js compatibility test needs Node.js 18+"
    command -v npm >/dev/null 2>&1 || die "npm is missing: the pusher-js compatibility test needs npm"
    compat_sum="$(sha256sum tests/compat/package-lock.json | cut -d' ' -f1)"
    if [ ! -f tests/compat/node_modules/.turnout-installed ] ||
        [ "$(cat tests/compat/node_modules/.turnout-installed)" != "$compat_sum" ]; then
        say "installing npm packages for tests/compat (pusher-js, laravel-echo)"
        (cd tests/compat && npm ci --no-audit --no-fund --silent) || die "npm ci in tests/compat failed"
        echo "$compat_sum" >tests/compat/node_modules/.turnout-installed
    fi
fi

# --- clients/pusher-resume: npm packages (pusher-js/Echo versions, playwright-core) and build --
resume_pkg="clients/pusher-resume"
if [ -f "$resume_pkg/package.json" ]; then
    command -v node >/dev/null 2>&1 || die "node is missing: $resume_pkg needs Node.js 18+"
    command -v npm >/dev/null 2>&1 || die "npm is missing: $resume_pkg needs npm"
    lock_sum="$(sha256sum "$resume_pkg/package-lock.json" | cut -d' ' -f1)"
    if [ ! -f "$resume_pkg/node_modules/.turnout-installed" ] ||
        [ "$(cat "$resume_pkg/node_modules/.turnout-installed")" != "$lock_sum" ]; then
        say "installing npm packages for $resume_pkg"
        # playwright-core never downloads a browser; the variable makes sure of it.
        (cd "$resume_pkg" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --silent) ||
            die "npm ci in $resume_pkg failed"
        echo "$lock_sum" >"$resume_pkg/node_modules/.turnout-installed"
    fi
    build_sum="$(cat "$resume_pkg"/src/*.ts "$resume_pkg"/tsconfig*.json "$resume_pkg/package-lock.json" | sha256sum | cut -d' ' -f1)"
    if [ ! -f "$resume_pkg/dist/esm/index.js" ] || [ ! -f "$resume_pkg/dist/cjs/index.js" ] ||
        [ ! -f "$resume_pkg/node_modules/.turnout-built" ] || [ "$(cat "$resume_pkg/node_modules/.turnout-built")" != "$build_sum" ]; then
        say "building $resume_pkg (ESM + CJS + types)"
        (cd "$resume_pkg" && npm run --silent build) || die "npm run build in $resume_pkg failed"
        echo "$build_sum" >"$resume_pkg/node_modules/.turnout-built"
    fi
fi

say "ready: .venv, redis-server $(redis-server --version | sed -n 's/.*v=\([0-9.]*\).*/\1/p'), haproxy, toxiproxy-server $toxiproxy_version, chromium"
