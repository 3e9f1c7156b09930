"""Keep-warm windows for Inference Endpoints, run by the `warmup` function.

Inside `WARM_SCHEDULE` an endpoint keeps one replica (`min_replica=1`: no cold start for the
first request, billed by the minute); outside it, `min_replica=0`, so it scales to zero after its
own scale-to-zero timeout of inactivity (Hugging Face's "Autoscaling" guide) and is not billed
while at zero. A paused endpoint is resumed inside the window (resuming sets its min and max
replicas to 1, Hugging Face's "Pause and Resume" guide) and left paused outside it. A failed
endpoint is only reported: Hugging Face says it must be created again.

The calls go through the warmup function's huggingface_hub client (router/_hub.py); only what
needs changing is changed, so a run inside the window on a warm endpoint makes one GET.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from router._deployments import Deployment
from router._endpoint_api import BROKEN_STATUSES, EndpointHub, split_id, status_of
from router._hub_rest import HubError


class EndpointKeeper(EndpointHub, Protocol):
    """What a keep-warm run needs of an endpoint: status, resume, and its minimum replicas."""

    def update_inference_endpoint(self, name: str, *, namespace: str | None = None,
                                  min_replica: int) -> Any:
        """Set the endpoint's minimum replicas."""


def keep_warm(hub: EndpointKeeper, deployment: Deployment, window_open: bool,
              actions: list[str]) -> tuple[dict[str, Any], str]:
    """Read the endpoint's status and set it for the window; return (its report, what was
    done: `resumed`, `min_replica_set`, `unchanged`, `broken` or `hub_error`)."""
    namespace, name = split_id(deployment.hub_id)
    started = time.monotonic()
    report: dict[str, Any] = {"kind": "endpoint", "id": deployment.hub_id}
    try:
        outcome = _apply(hub, deployment.name, namespace, name, window_open, report, actions)
    except HubError as exc:
        report.update(error="hub", hub_status=exc.status)
        outcome = "hub_error"
    report["latency_ms"] = round((time.monotonic() - started) * 1000.0, 1)
    return report, outcome


def _apply(hub: EndpointKeeper, label: str, namespace: str, name: str, window_open: bool,
           report: dict[str, Any], actions: list[str]) -> str:
    endpoint = hub.get_inference_endpoint(name, namespace=namespace)
    status = status_of(endpoint)
    current = getattr(endpoint, "min_replica", None)
    report.update(status=status, min_replica=current,
                  max_replica=getattr(endpoint, "max_replica", None))
    if status in BROKEN_STATUSES:
        return "broken"
    wanted = 1 if window_open else 0
    if status == "paused":
        if not window_open:
            return "unchanged"  # paused is cheaper still than scaled to zero: leave it
        after = hub.resume_inference_endpoint(name, namespace=namespace)
        actions.append(f"{label}:resume")
        report.update(status_after=status_of(after), min_replica=getattr(after, "min_replica",
                                                                         None))
        return "resumed"
    if current == wanted:
        return "unchanged"
    after = hub.update_inference_endpoint(name, namespace=namespace, min_replica=wanted)
    actions.append(f"{label}:set_min_replica={wanted}")
    report.update(status_after=status_of(after),
                  min_replica=getattr(after, "min_replica", wanted))
    return "min_replica_set"
