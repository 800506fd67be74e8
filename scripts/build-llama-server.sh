#!/usr/bin/env bash
# Build llama.cpp's llama-server from the pinned llama-cpp-python source distribution
# (PyPI is the only registry reachable here) and cache the binary: the build takes
# about 6 minutes on 2 cores, so it is done once per machine and reused.
set -euo pipefail

VERSION="0.3.36"
# The build's flavour: bump it when the flags change, so no machine keeps an older binary.
# noamx: -march=native enables ggml's AMX kernels on Sapphire Rapids, and they crash
# (SIGSEGV in ggml_backend_amx_mul_mat) where the VM does not grant the AMX tile state.
FLAVOUR="noamx"
CACHE="${PRIVLLM_CACHE:-$HOME/.cache/privllm}"
OUT="$CACHE/llama-server-$VERSION-$FLAVOUR"
BIN="$OUT/llama-server"

if [ -x "$BIN" ]; then
    echo "$BIN"
    exit 0
fi

command -v cmake >/dev/null || { echo "build-llama-server: cmake is required (apt-get install --no-install-recommends cmake)" >&2; exit 1; }
command -v c++ >/dev/null || { echo "build-llama-server: a C++ compiler is required (apt-get install --no-install-recommends g++)" >&2; exit 1; }

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
PY="${PYTHON:-python3}"
"$PY" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$WORK" >&2
tar -xzf "$WORK/llama_cpp_python-$VERSION.tar.gz" -C "$WORK"
SRC="$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp"

NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
cmake -S "$SRC" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_C_FLAGS="$NO_AMX" -DCMAKE_CXX_FLAGS="$NO_AMX" \
    -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >&2
cmake --build "$WORK/build" --target llama-server -j "$(nproc)" >&2

mkdir -p "$OUT.tmp"
install -m 0755 "$WORK/build/bin/llama-server" "$OUT.tmp/llama-server"
rm -rf "$OUT"
mv "$OUT.tmp" "$OUT"
echo "$BIN"
