#!/usr/bin/env bash
# Build `ask` for DigitalOcean's Linux x86_64 / CPython 3.11 runtime: the router library and its
# three dependencies (httpx, pydantic, tenacity). See lib/build_function.sh.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec bash "$here/../../../lib/build_function.sh" "$here"
