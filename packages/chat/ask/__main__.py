"""DigitalOcean Function `chat/ask`: the chat router's web entry (`web: raw`)."""

import os
import sys

# DigitalOcean's 3.11 prelauncher APPENDS this folder to sys.path, after the image's own
# site-packages, so a top-level `router` there would shadow ours. In the built function (our
# `router/` sits beside this file) put this folder first. A checkout has no `router/` here.
_HERE = os.path.dirname(os.path.realpath(__file__))
if os.path.isfile(os.path.join(_HERE, "router", "__init__.py")):
    sys.path[:] = [_HERE, *(p for p in sys.path if os.path.realpath(p or ".") != _HERE)]

from router import WebFunction  # noqa: E402 (after the path fix above)

# Per-container state (clients, breakers, wake cool-down), kept across warm invocations.
FUNCTION = WebFunction()


def main(event: dict, context: object) -> dict:  # type: ignore[type-arg]
    """Adapt the raw web event in, route it, adapt the answer out."""
    return FUNCTION(event, context)
