#!/usr/bin/env bash
# Builds llama.cpp's `llama-server` and `llama-quantize` for the worker from one pinned source with
# declared flags, and prints the folder that holds them (the engine home).
#
# The source is the llama.cpp that llama-cpp-python 0.3.36's sdist vendors (vendor/llama.cpp,
# server included), fetched from PyPI with pip and checked against its sha256. No network at build
# time beyond that: no prebuilt web UI from the Hub, no OpenSSL (the server listens on loopback).
#
# CPU kernels are chosen at run time: GGML_BACKEND_DL builds the CPU backend as one shared object
# per variant. Upstream's list (GGML_CPU_ALL_VARIANTS) includes `sapphirerapids`, whose AMX
# kernels fault on hosts that report AMX without granting the tile state, and `alderlake`
# (AVX-VNNI), which died by SIGILL on an AMD EPYC that reports AVX-512. So the list is replaced by
# ours (VARIANTS below: the x86-64-v3 floor and AVX-512; never AMX, never AVX-VNNI).
# Each variant gets its own folder holding the binaries and that one CPU library, because
# ggml's loader takes the best-scoring libggml-cpu-*.so beside the executable:
# ai_space/llama/variants.py picks the folder from the flags the process sees in /proc/cpuinfo.
#
# Layout of the printed folder:
#   BUILD                 what was built: version, source sha256, arch, flags, variants, key
#   lib/                  libllama, libggml, libggml-base, libmtmd (shared by every variant)
#   <variant>/            llama-server, llama-quantize, libggml-cpu-<variant>.so
# The folder is named after a hash of the version, the source's sha256, the arch, the flags and
# the variant list, so a build with other flags is never reused.
#
# Usage: build_server.sh [--flags | --variants | --key]: prints the folder, building it if absent
# (or only what is declared). LLAMA_SERVER_CACHE overrides the cache folder; LLAMA_SDIST names an
# already downloaded sdist (still checked against the sha256); PYTHON is the Python whose pip
# downloads it; LLAMA_BUILD_JOBS the parallel compile jobs (2).
set -euo pipefail

VERSION=0.3.36
SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
# name:GGML features (upstream's names and feature sets for the same microarchitectures).
# Two, because each one compiles the whole CPU backend again: an AVX-512 VBMI/VNNI level
# (upstream's icelake) measured no faster than skylakex on SmolLM2 here, and cost build time.
VARIANTS="haswell:SSE42,AVX,F16C,FMA,AVX2,BMI2
 skylakex:SSE42,AVX,F16C,FMA,AVX2,BMI2,AVX512"
FLAGS="-DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON
 -DGGML_CPU_ALL_VARIANTS=ON -DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF
 -DGGML_AMX_BF16=OFF -DGGML_CPU_REPACK=ON -DGGML_LLAMAFILE=ON -DGGML_OPENMP=ON -DGGML_BLAS=OFF
 -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF -DGGML_RPC=OFF -DGGML_CCACHE=OFF
 -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
 -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF
 -DLLAMA_LLGUIDANCE=OFF -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON"
# One line, single spaces: the hash must not depend on layout.
FLAGS=$(echo $FLAGS)
VARIANTS=$(echo $VARIANTS)
# Binaries in <variant>/ find the shared libraries in ../lib; the libraries find each other in
# their own folder. Kept out of FLAGS because of the quoting $ORIGIN needs.
RPATH='$ORIGIN/../lib:$ORIGIN'

arch=$(uname -m)
key=$(printf '%s|%s|%s|%s|%s|%s\n' "$VERSION" "$SDIST_SHA256" "$arch" "$FLAGS" "$VARIANTS" \
  "$RPATH" | sha256sum | cut -c1-16)
case "${1:-}" in
  --flags) echo "$FLAGS"; exit 0 ;;
  --variants) echo "$VARIANTS"; exit 0 ;;
  --key) echo "$key"; exit 0 ;;
esac
if [ "$arch" != x86_64 ]; then
  echo "error: build_server.sh declares x86-64 CPU variants only; this machine is $arch" >&2
  exit 1
fi
root=${LLAMA_SERVER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/chat-router/llama-server}
home=$root/$key
if [ -f "$home/BUILD" ]; then echo "$home"; exit 0; fi

mkdir -p "$root"
tmp=$(mktemp -d "$root/.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
sdist=${LLAMA_SDIST:-}
if [ -z "$sdist" ]; then
  sdist=$root/llama_cpp_python-$VERSION.tar.gz
  if [ ! -f "$sdist" ]; then
    "${PYTHON:-python3}" -m pip --disable-pip-version-check -q download --no-deps \
      --no-binary :all: -d "$tmp/sdist" "llama-cpp-python==$VERSION" >&2
    mv "$tmp/sdist/llama_cpp_python-$VERSION.tar.gz" "$sdist"
  fi
fi
echo "$SDIST_SHA256  $sdist" | sha256sum -c --quiet - >&2 \
  || { echo "error: $sdist is not llama-cpp-python $VERSION's sdist (sha256 differs)" >&2; exit 1; }
tar -xzf "$sdist" -C "$tmp" "llama_cpp_python-$VERSION/vendor/llama.cpp"
src=$tmp/llama_cpp_python-$VERSION/vendor/llama.cpp

# Replace upstream's x86 variant list with ours, checking the text it replaces is still there.
"${PYTHON:-python3}" - "$src/ggml/src/CMakeLists.txt" "$VARIANTS" <<'EOF'
import re, sys
path, variants = sys.argv[1], sys.argv[2].split()
text = open(path).read()
block = re.compile(r'(if \(GGML_SYSTEM_ARCH STREQUAL "x86"\)\n)(\s+ggml_add_cpu_backend_variant\(x64\)'
                   r'.*?sapphirerapids[^\n]*\n\s+endif\(\)\n)(\s+elseif ?\(GGML_SYSTEM_ARCH)', re.S)
found = block.findall(text)
if len(found) != 1:
    sys.exit("error: upstream's x86 CPU variant list is not where build_server.sh expects it")
ours = "".join(f"        ggml_add_cpu_backend_variant({v.split(':')[0]} "
               f"{' '.join(v.split(':')[1].split(','))})\n" for v in variants)
open(path, "w").write(block.sub(lambda m: m.group(1) + ours + m.group(3), text))
EOF

# shellcheck disable=SC2086  # FLAGS is a list of words on purpose
cmake -S "$src" -B "$tmp/build" -G Ninja $FLAGS "-DCMAKE_INSTALL_RPATH=$RPATH" \
  > "$tmp/configure.log" 2>&1 || { tail -n 40 "$tmp/configure.log" >&2; exit 1; }
targets="llama-server llama-quantize"
for v in $VARIANTS; do targets="$targets ggml-cpu-${v%%:*}"; done
echo "building llama-server $VERSION (variants: $(for v in $VARIANTS; do printf '%s ' "${v%%:*}"; done)) with ${LLAMA_BUILD_JOBS:-2} jobs: first time only" >&2
started=$(date +%s)
# shellcheck disable=SC2086
nice cmake --build "$tmp/build" -j "${LLAMA_BUILD_JOBS:-2}" --target $targets \
  > "$tmp/build.log" 2>&1 || { tail -n 40 "$tmp/build.log" >&2; exit 1; }

out=$tmp/home
bin=$tmp/build/bin
mkdir -p "$out/lib"
for lib in "$bin"/lib*.so*; do
  case ${lib##*/} in libggml-cpu-*) ;; *) cp -a "$lib" "$out/lib/" ;; esac
done
for v in $VARIANTS; do
  name=${v%%:*}
  mkdir "$out/$name"
  cp "$bin/libggml-cpu-$name.so" "$out/$name/"
  for exe in llama-server llama-quantize; do
    # A hard link where the file system allows it (one copy on disk), else a copy: ggml finds
    # the CPU library next to the path the process was started from (/proc/self/exe).
    if [ "$name" = "${VARIANTS%%:*}" ]; then cp "$bin/$exe" "$out/$name/"
    else ln "$out/${VARIANTS%%:*}/$exe" "$out/$name/$exe" 2>/dev/null || cp "$bin/$exe" "$out/$name/"; fi
  done
done
{
  echo "version $VERSION"
  echo "source llama_cpp_python-$VERSION.tar.gz vendor/llama.cpp sha256 $SDIST_SHA256"
  echo "arch $arch"
  echo "flags $FLAGS"
  echo "rpath $RPATH"
  echo "variants $VARIANTS"
  echo "key $key"
  echo "seconds $(( $(date +%s) - started )) with ${LLAMA_BUILD_JOBS:-2} jobs"
} > "$out/BUILD.tmp"
mv "$out/BUILD.tmp" "$out/BUILD"
# Another build of the same key may have finished meanwhile (two clones, one cache): keep the
# one in place, which running servers may be using, and drop ours.
[ -f "$home/BUILD" ] || rm -rf "$home"
mv -T "$out" "$home" 2>/dev/null || [ -f "$home/BUILD" ] \
  || { echo "error: could not move the build to $home" >&2; exit 1; }
echo "$home"
