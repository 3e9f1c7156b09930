#!/usr/bin/env bash
# Build one function of package `chat` for DigitalOcean's runtime (Linux x86_64, CPython 3.11),
# whatever OS the deployer runs. Each function's build.sh calls this (a local build: `doctl
# serverless deploy .` runs build.sh in the function's folder).
#
#   lib/build_function.sh FUNCTION_DIR [EXTRA_REQUIREMENT ...]
#
# - makes FUNCTION_DIR/virtualenv with the `virtualenv` tool (the runtime runs
#   bin/activate_this.py) and points it at lib/python3.11, the runtime's version;
# - installs requirements/router.txt (+ the extras) as manylinux x86_64 cp311 wheels into
#   virtualenv/lib/python3.11/site-packages, so compiled ones (pydantic-core) fit the runtime;
# - copies the runtime library (router/) next to the function's __main__.py.
set -euo pipefail
fn_dir="$(cd "$1" && pwd)"
shift
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$fn_dir"

PYTHON="${PYTHON:-python3}"
if command -v virtualenv >/dev/null 2>&1; then
  VIRTUALENV=(virtualenv)
else
  VIRTUALENV=("$PYTHON" -m virtualenv)
fi

rm -rf virtualenv router
"${VIRTUALENV[@]}" --without-pip --quiet virtualenv
site="virtualenv/lib/python3.11/site-packages"
mkdir -p "$site"
sed -i.bak -E "s#\.\./lib/python3\.[0-9]+/site-packages#../lib/python3.11/site-packages#" \
  virtualenv/bin/activate_this.py && rm -f virtualenv/bin/activate_this.py.bak

"$PYTHON" -m pip install --quiet --disable-pip-version-check --no-compile \
  --target "$site" \
  --platform manylinux2014_x86_64 --implementation cp --python-version 3.11 \
  --only-binary=:all: --upgrade \
  -r "$root/requirements/router.txt" "$@"

# The runtime library, whole: the service (router_service/) and the tools (router_tools/) never
# ship in a function, and the runtime imports neither (pyproject.toml's import contracts).
mkdir router
cp "$root"/router/*.py router/
rm -rf "$site"/*.dist-info/RECORD
find "$site" -name '__pycache__' -type d -prune -exec rm -rf {} +
