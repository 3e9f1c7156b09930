"""DigitalOcean Function `chat/warmup`: the scheduled keep-warm run (`web: false`)."""

import os
import sys

# DigitalOcean's 3.11 prelauncher APPENDS this folder to sys.path, after the image's own
# site-packages, so a top-level `router` there would shadow ours. In the built function (our
# `router/` sits beside this file) put this folder first. A checkout has no `router/` here.
_HERE = os.path.dirname(os.path.realpath(__file__))
if os.path.isfile(os.path.join(_HERE, "router", "__init__.py")):
    sys.path[:] = [_HERE, *(p for p in sys.path if os.path.realpath(p or ".") != _HERE)]

from router import WarmupFunction  # noqa: E402 (after the path fix above)

# Per-container state (HTTP client, Hub client), kept across warm invocations.
FUNCTION = WarmupFunction()


def main(event: dict, context: object) -> dict:  # type: ignore[type-arg]
    """Adapt the trigger's body in, run the warm-up, return its JSON report."""
    return FUNCTION(event, context)
