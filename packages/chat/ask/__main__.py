"""DigitalOcean Function `chat/ask`: the chat router's web entry (`web: raw`)."""

from router import WebFunction

# Per-container state (clients, breakers, wake cool-down), kept across warm invocations.
FUNCTION = WebFunction()


def main(event: dict, context: object) -> dict:  # type: ignore[type-arg]
    """Adapt the raw web event in, route it, adapt the answer out."""
    return FUNCTION(event, context)
