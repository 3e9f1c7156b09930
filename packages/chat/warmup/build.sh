#!/usr/bin/env bash
# Build `warmup` for DigitalOcean's Linux x86_64 / CPython 3.11 runtime: like `ask`, plus
# huggingface_hub (the Hub client the run uses to read the Space's stage and restart it). Its
# cold start does not matter; the size does (48 MB at most). tzdata (requirements/router.txt)
# ships the time zones WARM_SCHEDULE names. See lib/build_function.sh.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../.." && pwd)"

# The same pin as the model server's (requirements/server.txt), so both speak one Hub API.
hub_pin="$(grep -iE '^huggingface[-_]hub==' "$root/requirements/server.txt")"
bash "$root/lib/build_function.sh" "$here" "$hub_pin"

# hf_xet (11 MB) only speeds up large uploads; the warmup never uploads, and huggingface_hub
# imports it only when it is there.
site="$here/virtualenv/lib/python3.11/site-packages"
rm -rf "$site"/hf_xet "$site"/hf_xet-*.dist-info
