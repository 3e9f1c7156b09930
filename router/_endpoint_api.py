"""Hugging Face Inference Endpoints: reading an endpoint's status and resuming it, over httpx.

What the router relies on (Hugging Face's Inference Endpoints docs, "Autoscaling" and "Pause and
Resume", and huggingface_hub 2.4.0's `HfApi`):
- an endpoint's status is one of pending, initializing, updating, updateFailed, running,
  paused, failed, scaledToZero (`GET /endpoint/{namespace}/{name}`, `status.state`);
- a scaled-to-zero endpoint starts on a request, and its proxy answers 503 while the replica
  initializes (unless the request sends `X-Scale-Up-Timeout`, which the router does not: it
  answers from another deployment instead of holding the caller);
- a paused endpoint does not start on a request: only `POST .../resume` starts it (resuming
  sets its min and max replicas to 1); resuming one already running answers 400 "already
  running", which huggingface_hub's `running_ok` treats as done, and so does this client.

`EndpointRest`'s methods have the names and keywords of `HfApi`'s, so `wake_endpoint` works
with either client (the warmup function's goes through huggingface_hub, router/_hub.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

from router._hub_rest import HubError, RestClient

# Statuses in which a resume is what the endpoint needs.
WAKE_STATUSES = frozenset({"paused", "scaledToZero"})
READY_STATUSES = frozenset({"running"})
STARTING_STATUSES = frozenset({"pending", "initializing", "updating"})
BROKEN_STATUSES = frozenset({"failed", "updateFailed"})


class EndpointHub(Protocol):
    """What waking an endpoint needs (HfApi satisfies it too)."""

    def get_inference_endpoint(self, name: str, *, namespace: str | None = None) -> Any:
        """The endpoint; its `status` says whether it runs."""

    def resume_inference_endpoint(self, name: str, *, namespace: str | None = None) -> Any:
        """Start a paused or scaled-to-zero endpoint."""


@dataclass(frozen=True, slots=True)
class EndpointInfo:
    """The part of an endpoint's description the router reads."""

    status: str
    min_replica: int | None
    max_replica: int | None
    raw: dict[str, Any]


def info_of(raw: dict[str, Any]) -> EndpointInfo:
    """An endpoint's status and scaling, from the API's JSON (absent parts are None)."""
    status = raw.get("status")
    compute = raw.get("compute")
    scaling = compute.get("scaling") if isinstance(compute, dict) else None
    scaling = scaling if isinstance(scaling, dict) else {}

    def replicas(key: str) -> int | None:
        value = scaling.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    state = status.get("state") if isinstance(status, dict) else None
    return EndpointInfo(str(state or ""), replicas("minReplica"), replicas("maxReplica"), raw)


def split_id(hub_id: str) -> tuple[str, str]:
    """`namespace/name` as (namespace, name)."""
    namespace, _, name = hub_id.partition("/")
    return namespace, name


class EndpointRest(RestClient):
    """The Inference Endpoints API over httpx: an endpoint's status, and resume."""

    def _path(self, name: str, namespace: str | None) -> str:
        return f"/endpoint/{quote(namespace or '', safe='')}/{quote(name, safe='')}"

    def get_inference_endpoint(self, name: str, *, namespace: str | None = None
                               ) -> EndpointInfo:
        """GET /endpoint/{namespace}/{name}."""
        return info_of(self.call("GET", self._path(name, namespace)))

    def resume_inference_endpoint(self, name: str, *, namespace: str | None = None
                                  ) -> EndpointInfo:
        """POST /endpoint/{namespace}/{name}/resume; one already running counts as resumed."""
        try:
            return info_of(self.call("POST", self._path(name, namespace) + "/resume"))
        except HubError as exc:
            if exc.status == 400 and "already running" in exc.detail:
                return self.get_inference_endpoint(name, namespace=namespace)
            raise


def status_of(endpoint: Any) -> str:
    """The status string of an endpoint from either client."""
    return str(getattr(endpoint, "status", "") or "")


def wake_endpoint(api: EndpointHub, hub_id: str) -> tuple[str, bool]:
    """Resume the endpoint if its status says it needs it; return (status seen, resumed?).

    A running or starting endpoint is left alone, and so is a failed one (resuming would not
    help: Hugging Face says a failed endpoint must be created again).
    """
    namespace, name = split_id(hub_id)
    status = status_of(api.get_inference_endpoint(name, namespace=namespace))
    if status not in WAKE_STATUSES:
        return status, False
    return status_of(api.resume_inference_endpoint(name, namespace=namespace)) or status, True
