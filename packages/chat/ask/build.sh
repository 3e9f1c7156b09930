#!/usr/bin/env bash
# Build the `ask` function for DigitalOcean's runtime (Linux x86_64, CPython 3.11), whatever OS
# the deployer runs: `doctl serverless deploy .` runs this in the function's folder (local build).
#
# - copies the router library in next to __main__.py;
# - makes `virtualenv/` with the `virtualenv` tool (the runtime runs bin/activate_this.py);
# - installs the router's dependencies as manylinux x86_64 cp311 wheels into
#   virtualenv/lib/python3.11/site-packages, so compiled ones (pydantic-core) fit the runtime.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
cd "$here"

PYTHON="${PYTHON:-python3}"
if command -v virtualenv >/dev/null 2>&1; then
  VIRTUALENV=(virtualenv)
else
  VIRTUALENV=("$PYTHON" -m virtualenv)
fi

rm -rf virtualenv router
"${VIRTUALENV[@]}" --without-pip --quiet virtualenv
# The runtime is 3.11: point activate_this.py at lib/python3.11 even if the tool's Python differs.
site="virtualenv/lib/python3.11/site-packages"
mkdir -p "$site"
sed -i.bak -E "s#\.\./lib/python3\.[0-9]+/site-packages#../lib/python3.11/site-packages#" \
  virtualenv/bin/activate_this.py && rm -f virtualenv/bin/activate_this.py.bak

"$PYTHON" -m pip install --quiet --disable-pip-version-check --no-compile \
  --target "$site" \
  --platform manylinux2014_x86_64 --implementation cp --python-version 3.11 \
  --only-binary=:all: --upgrade \
  -r "$root/requirements/router.txt"

# The library itself, without caches or tests.
mkdir router
cp "$root"/router/*.py router/
rm -rf router/__pycache__ "$site"/*.dist-info/RECORD
find "$site" -name '__pycache__' -type d -prune -exec rm -rf {} +
