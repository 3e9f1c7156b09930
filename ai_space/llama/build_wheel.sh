#!/usr/bin/env bash
# Builds llama-cpp-python for the worker with declared, portable flags, and prints the wheel's
# path. PyPI ships only its source for Linux, and pip's default build is GGML_NATIVE: it compiles
# for whatever CPU runs the build (AMX kernels included on a recent Xeon, which fault on hosts that
# report AMX without handing threads the tile state). So the flags are fixed here, once, for
# `make` and for Dockerfile.worker alike:
#   floor x86-64-v3 (AVX, AVX2, FMA, F16C, BMI2); no AVX-512, no AVX-VNNI, no AMX; no -march=native.
# The wheel lands in a folder named after a hash of the version and the flags, and pip's own
# wheel cache is bypassed (--no-cache-dir), so a wheel built with other flags is never reused.
#
# Usage: build_wheel.sh [PYTHON]   (LLAMA_WHEEL_CACHE overrides the cache folder)
set -euo pipefail

PYTHON=${1:-python3}
VERSION=0.3.36
FLAGS="-DGGML_NATIVE=OFF -DGGML_CPU_ALL_VARIANTS=OFF -DGGML_BACKEND_DL=OFF
 -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
 -DGGML_AVX_VNNI=OFF -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF
 -DGGML_AVX512_BF16=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
 -DGGML_CPU_REPACK=ON -DGGML_OPENMP=ON -DGGML_BLAS=OFF -DGGML_CUDA=OFF -DGGML_VULKAN=OFF
 -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF
 -DLLAMA_BUILD_SERVER=OFF"
FLAGS=$(echo $FLAGS)  # one line, single spaces: the hash must not depend on layout

if [ "${1:-}" = "--flags" ]; then echo "$FLAGS"; exit 0; fi

key=$(printf '%s|%s|%s\n' "$VERSION" "$(uname -m)" "$FLAGS" | sha256sum | cut -c1-16)
cache=${LLAMA_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/chat-router/llama-wheels}/$key
wheel=$(ls "$cache"/llama_cpp_python-"$VERSION"-*.whl 2>/dev/null | head -n 1 || true)
if [ -z "$wheel" ]; then
  echo "building llama-cpp-python $VERSION with portable flags (first time only, about 6 minutes on 2 cores)" >&2
  mkdir -p "${cache%/*}"
  tmp=$(mktemp -d "${cache%/*}/.tmp.XXXXXX")
  CMAKE_ARGS="$FLAGS" FORCE_CMAKE=1 "$PYTHON" -m pip --disable-pip-version-check -q wheel \
    --no-cache-dir --no-deps --no-binary llama-cpp-python -w "$tmp" "llama-cpp-python==$VERSION" >&2
  printf '%s\n' "$FLAGS" > "$tmp/FLAGS"
  rm -rf "$cache"; mv "$tmp" "$cache"
  wheel=$(ls "$cache"/llama_cpp_python-"$VERSION"-*.whl | head -n 1)
fi
echo "$wheel"
