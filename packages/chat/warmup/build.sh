#!/usr/bin/env bash
# Build the `warmup` function for DigitalOcean's runtime (Linux x86_64, CPython 3.11), whatever OS
# the deployer runs: `doctl serverless deploy .` runs this in the function's folder (local build).
#
# Like packages/chat/ask/build.sh, plus huggingface_hub (the Hub client the run uses to read the
# Space's stage and restart it). Its cold start does not matter; the size does (48 MB at most).
# tzdata (in requirements/router.txt) ships the time zones WARM_SCHEDULE names.
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

# The same pin as the model server's (requirements/server.txt), so both speak one Hub API.
hub_pin="$(grep -iE '^huggingface[-_]hub==' "$root/requirements/server.txt")"
"$PYTHON" -m pip install --quiet --disable-pip-version-check --no-compile \
  --target "$site" \
  --platform manylinux2014_x86_64 --implementation cp --python-version 3.11 \
  --only-binary=:all: --upgrade \
  -r "$root/requirements/router.txt" "$hub_pin"

# The library itself, without caches or tests.
mkdir router
cp "$root"/router/*.py router/
rm -rf router/__pycache__ "$site"/*.dist-info/RECORD
# hf_xet (11 MB) only speeds up large uploads; the warmup never uploads, and huggingface_hub
# imports it only when it is there.
rm -rf "$site"/hf_xet "$site"/hf_xet-*.dist-info
find "$site" -name '__pycache__' -type d -prune -exec rm -rf {} +
