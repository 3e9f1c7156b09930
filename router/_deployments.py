"""Deployments: what each tier (`small`, `llm`) holds, read once from the settings.

`WORKER_URL` and `SPACE_URL` stay the one-deployment shorthand (deployments named `worker` and
`space`). `SMALL_DEPLOYMENTS` and `LLM_DEPLOYMENTS` add more to a tier, one entry each, `;`
between entries, each a name and `key=value` words (the form of `WARM_SCHEDULE`: it survives
project.yml's `"${VAR}"` templating, `.env` and an App Platform spec as one plain string):

    space-b kind=space url=https://acme-chat-b.hf.space token=SPACE_B_TOKEN id=acme/chat-b;
    ep kind=endpoint url=https://x.us-east-1.aws.endpoints.huggingface.cloud token=HF_TOKEN
       id=acme/chat-ep weight=2 context=32768 model=tgi instance=nvidia-a10g-x1

A secret never sits in the shape: `token=` and `hub_token=` name the environment variable that
holds it (a `type: SECRET` env of its own on App Platform). Names are the labels that answers
(`X-Chat-Backend`), logs, metrics and traces carry, so only configured names can appear there.
Every error names the variable and the entry (by name, or by position when the name itself is
bad) and the key, never a value: a URL or a token must not reach an answer.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal, cast
from urllib.parse import urlsplit

Kind = Literal["space", "endpoint", "worker", "openai"]
Tier = Literal["small", "llm"]
KINDS: tuple[Kind, ...] = ("space", "endpoint", "worker", "openai")
# Kinds that sleep or scale to zero, and are billed by the minute awake: kept off hours.
SLEEPERS = frozenset({"space", "endpoint"})
KEYS = frozenset({"kind", "url", "token", "weight", "model", "context", "id", "hub_token",
                  "instance"})
MAX_WEIGHT = 1_000
MAX_CONTEXT = 10_000_000
MAX_DEPLOYMENTS = 16  # per tier: a label set, and a loop, that stay small
DEFAULT_HUB_VAR = "HF_TOKEN"
# Patterns, compiled on first use (re's cache): a setup without entries never pays for them
# on the `ask` function's cold start. A name is a label value: short, lower case, nothing that
# could be a secret or a URL.
_NAME = r"[a-z0-9][a-z0-9_-]{0,31}"
_VAR = r"[A-Z_][A-Z0-9_]{0,63}"
_ID = r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*"
_MODEL = r"[!-~]{1,128}"
_INSTANCE = r"[a-z0-9][a-z0-9._-]{0,63}"


@dataclass(frozen=True, slots=True)
class Deployment:
    """One deployment of a tier: where it is, how to call it, how much of the tier it takes."""

    name: str
    tier: Tier
    kind: Kind
    url: str
    token: str = ""
    weight: int = 1
    # The `model` sent to it (its served model name).
    model: str = ""
    # Its context window in tokens; 0 = not known.
    context: int = 0
    # The Space's repo id, or the endpoint's namespace/name: what a wake needs.
    hub_id: str = ""
    hub_token: str = ""
    # An endpoint's instance type and size (`nvidia-a10g-x1`), for the cost tool.
    instance: str = ""

    @property
    def sleeps(self) -> bool:
        """Whether it sleeps or scales to zero (a Space, an Inference Endpoint)."""
        return self.kind in SLEEPERS

    @property
    def can_wake(self) -> bool:
        """Whether the router holds what waking it through the Hub needs."""
        return self.sleeps and bool(self.hub_id and self.hub_token)

    @property
    def variable(self) -> str:
        """The variable its tier's entries are written in."""
        return "SMALL_DEPLOYMENTS" if self.tier == "small" else "LLM_DEPLOYMENTS"

    def headers(self) -> dict[str, str]:
        """Its request headers: its own token as `Authorization`; a Space's Hub token as
        `X-HF-Authorization`, which Hugging Face's proxy reads (and strips) for a private
        Space while the app's own token travels in plain Authorization."""
        headers = {"authorization": f"Bearer {self.token}"} if self.token else {}
        if self.kind == "space" and self.hub_token:
            headers["x-hf-authorization"] = f"Bearer {self.hub_token}"
        return headers


# One deployment as written in SMALL_DEPLOYMENTS or LLM_DEPLOYMENTS, its secrets still named
# by variable, not read: (the deployment, its token's variable, its Hub token's variable).
Entry = tuple[Deployment, str, str]


def check_url(value: str) -> str:
    """An http(s) URL with a host, without a trailing slash; ValueError (naming nothing of
    the value) otherwise."""
    if not value.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises on a port out of range
    except ValueError:
        raise ValueError("not a URL") from None
    if not parts.hostname or any(char <= " " or char == "\x7f" for char in value):
        raise ValueError("not a URL")
    return value.rstrip("/")


def _url(text: str) -> str:
    try:
        return check_url(text)
    except ValueError as exc:
        raise ValueError(f"url {exc}") from None


def _number(text: str, what: str, low: int, high: int) -> int:
    if not text.isdigit() or not low <= int(text) <= high:
        raise ValueError(f"{what} must be a whole number from {low} to {high}")
    return int(text)


def _entry(words: list[str], tier: Tier, default_model: str) -> Entry:
    fields: dict[str, str] = {}
    for word in words[1:]:
        key, sep, value = word.partition("=")
        if not sep:
            raise ValueError("expected key=value words after the name")
        if key not in KEYS:
            # The word is not echoed: a value pasted in the wrong place may be a secret.
            raise ValueError(f"an unknown key; keys are {', '.join(sorted(KEYS))}")
        if key in fields:
            raise ValueError(f"{key} is given twice")
        fields[key] = value
    if fields.get("kind") not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}")
    if "url" not in fields:
        raise ValueError("url is required")
    for key in ("token", "hub_token"):
        if key in fields and not re.fullmatch(_VAR, fields[key]):
            raise ValueError(f"{key} must name an environment variable (like SPACE_B_TOKEN), "
                             "not hold the token")
    if "id" in fields and not re.fullmatch(_ID, fields["id"]):
        raise ValueError("id must be owner/name")
    if "model" in fields and not re.fullmatch(_MODEL, fields["model"]):
        raise ValueError("model must be visible ASCII, at most 128 characters")
    if "instance" in fields and not re.fullmatch(_INSTANCE, fields["instance"]):
        raise ValueError("instance must look like nvidia-a10g-x1")
    deployment = Deployment(
        name=words[0], tier=tier, kind=cast(Kind, fields["kind"]), url=_url(fields["url"]),
        weight=_number(fields["weight"], "weight", 1, MAX_WEIGHT) if "weight" in fields else 1,
        model=fields.get("model") or default_model,
        context=_number(fields["context"], "context", 0, MAX_CONTEXT)
        if "context" in fields else 0,
        hub_id=fields.get("id", ""), instance=fields.get("instance", ""))
    return deployment, fields.get("token", ""), fields.get("hub_token", DEFAULT_HUB_VAR)


def parse(text: str, variable: str, default_model: str = "") -> list[Entry]:
    """The entries of one tier's variable (SMALL_DEPLOYMENTS or LLM_DEPLOYMENTS), their model
    `default_model` unless they name one; ValueError naming `variable` and the bad entry."""
    tier: Tier = "small" if variable == "SMALL_DEPLOYMENTS" else "llm"
    entries: list[Entry] = []
    chunks = [chunk.strip() for chunk in text.split(";")]
    for position, chunk in enumerate((c for c in chunks if c), start=1):
        words = chunk.split()
        if not re.fullmatch(_NAME, words[0]):
            raise ValueError(f"{variable}: entry {position}: a name comes first: lower-case "
                             "letters, digits, - and _, at most 32 characters")
        try:
            entries.append(_entry(words, tier, default_model))
        except ValueError as exc:
            raise ValueError(f"{variable}: deployment '{words[0]}': {exc}") from None
    if len(entries) > MAX_DEPLOYMENTS:
        raise ValueError(f"{variable}: at most {MAX_DEPLOYMENTS} deployments")
    return entries


def token_variables(*texts: str) -> set[str]:
    """The environment variables that the entries name for their tokens (read at the edge,
    with the rest of the environment). Malformed text names none: `parse` reports it."""
    names: set[str] = set()
    for text in texts:
        for word in text.split():
            key, sep, value = word.partition("=")
            if sep and key in ("token", "hub_token") and re.fullmatch(_VAR, value):
                names.add(value)
    return names


def build(shorthand: Sequence[Deployment], texts: Mapping[Tier, str],
          models: Mapping[Tier, str], secret: Callable[[str], str]) -> tuple[Deployment, ...]:
    """Every deployment, small tier first, the shorthand's (`worker`, and `space` when
    SPACE_URL is set) first in each, then the tier's entries (`texts`) in the order written,
    each with the tier's model (`models`) unless it names one. `secret(name)` reads a variable
    an entry names; ValueError on any bad entry."""
    deployments: list[Deployment] = []
    tiers: tuple[tuple[Tier, str], ...] = (("small", "SMALL_DEPLOYMENTS"),
                                           ("llm", "LLM_DEPLOYMENTS"))
    for tier, variable in tiers:
        deployments += [d for d in shorthand if d.tier == tier]
        deployments += [_resolve(entry, secret)
                        for entry in parse(texts[tier], variable, models[tier])]
    seen: set[str] = set()
    for deployment in deployments:
        if deployment.name in seen:
            raise ValueError(f"{deployment.variable}: deployment '{deployment.name}' is named "
                             "twice (`worker` and `space` are taken by WORKER_URL and "
                             "SPACE_URL)")
        seen.add(deployment.name)
    return tuple(deployments)


def _resolve(entry: Entry, secret: Callable[[str], str]) -> Deployment:
    written, token_var, hub_token_var = entry
    where = f"{written.variable}: deployment '{written.name}'"
    token = secret(token_var) if token_var else ""
    if token_var and not token:
        raise ValueError(f"{where}: token variable {token_var} is not set (list it in "
                         "project.yml's environment, or the app's envs)")
    if not all("!" <= char <= "~" for char in token):
        # It travels in a header: anything else would fail every call.
        raise ValueError(f"{where}: {token_var} must be visible ASCII, without spaces")
    if written.kind not in SLEEPERS and written.hub_id:
        raise ValueError(f"{where}: id is for a space or an endpoint")
    hub_token = secret(hub_token_var) if written.kind in SLEEPERS else ""
    if written.hub_id and not hub_token:
        raise ValueError(f"{where}: waking it needs {hub_token_var}, which is not set")
    if not all("!" <= char <= "~" for char in hub_token):
        raise ValueError(f"{where}: {hub_token_var} must be visible ASCII, without spaces")
    return replace(written, token=token, hub_token=hub_token)


def by_tier(deployments: tuple[Deployment, ...]) -> Mapping[Tier, tuple[Deployment, ...]]:
    """The deployments of each tier, in order."""
    return {tier: tuple(d for d in deployments if d.tier == tier)
            for tier in ("small", "llm")}
