"""DigitalOcean Function `chat/warmup`: the scheduled keep-warm run (`web: false`)."""

from router import WarmupFunction

# Per-container state (HTTP client, Hub client), kept across warm invocations.
FUNCTION = WarmupFunction()


def main(event: dict, context: object) -> dict:  # type: ignore[type-arg]
    """Adapt the trigger's body in, run the warm-up, return its JSON report."""
    return FUNCTION(event, context)
