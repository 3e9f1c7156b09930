"""Several deployments of one tier on loopback, and the environment that configures them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from tests.fakes.openai_backend import FakeBackend
from tests.support.loopback import LoopbackServer


@contextmanager
def deployments(*names: str) -> Iterator[dict[str, FakeBackend]]:
    """A FakeBackend per name (answering as itself, `<name>: ...`, and wanting the token
    `tok-<name>`), each on its own loopback server with its `url` set."""
    with ExitStack() as stack:
        fakes: dict[str, FakeBackend] = {}
        for name in names:
            fake = FakeBackend(name, token=token_of(name))
            fake.url = stack.enter_context(LoopbackServer(fake)).url
            stack.callback(fake.release)
            fakes[name] = fake
        yield fakes


def token_of(name: str) -> str:
    """The token a fake deployment wants."""
    return f"tok-{name}"


def variable_of(name: str) -> str:
    """The environment variable that holds a fake deployment's token."""
    return "TOKEN_" + name.upper().replace("-", "_")


def llm_env(fakes: dict[str, FakeBackend], **keys: str) -> dict[str, str]:
    """LLM_DEPLOYMENTS for `fakes` (plain OpenAI-compatible servers), with each token in its
    own variable; `keys` adds words per deployment (`{"gpu-a": "weight=2"}` as gpu_a=...)."""
    entries = []
    env: dict[str, str] = {}
    for name, fake in fakes.items():
        extra = keys.get(name.replace("-", "_"), "")
        entries.append(f"{name} kind=openai url={fake.url} token={variable_of(name)} {extra}")
        env[variable_of(name)] = token_of(name)
    return {**env, "LLM_DEPLOYMENTS": "; ".join(entries)}
