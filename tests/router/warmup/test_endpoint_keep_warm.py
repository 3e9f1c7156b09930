"""Keep-warm windows for an Inference Endpoint (issue 26): the real warmup entry, through
huggingface_hub's real HfApi, against the fake endpoints API."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import ENDPOINT_ID, HF_TOKEN, SECRETS, WORKER_TOKEN
from tests.fakes.endpoints import EndpointProxy, FakeEndpointsApi
from tests.fakes.openai_backend import FakeBackend
from tests.router.warmup.conftest import closed_now, open_now, scheduled_event

PATH = f"/v2/endpoint/{ENDPOINT_ID}"


def env_for(worker: FakeBackend, endpoint: EndpointProxy, api: FakeEndpointsApi,
            schedule: str) -> dict[str, str]:
    """The warmup function's environment: the worker and the endpoint `ep`."""
    return {"WORKER_URL": worker.url, "WORKER_TOKEN": WORKER_TOKEN, "HF_TOKEN": HF_TOKEN,
            "HF_ENDPOINTS_API": api.url, "WARM_SCHEDULE": schedule, "SPACE_URL": "none",
            "SPACE_ID": "none",
            "LLM_DEPLOYMENTS": f"ep kind=endpoint url={endpoint.url} token=HF_TOKEN "
                               f"id={ENDPOINT_ID}"}


def scaling_puts(api: FakeEndpointsApi) -> list[Any]:
    """The minimum replicas each PUT asked for."""
    return [body["compute"]["scaling"]["minReplica"] for method, _, body in api.bodies
            if method == "PUT"]


def test_the_window_sets_min_replicas_to_one_inside_and_zero_outside(
        make_warmup, worker: FakeBackend, endpoints_api: FakeEndpointsApi,
        endpoint: EndpointProxy):
    """GIVEN a scaled-to-zero endpoint with min replicas 0 WHEN the scheduled run fires inside
    the window, again inside it, then outside it THEN the first sets min replicas to 1 (which
    starts it), the second changes nothing (one GET), the third sets 0 again; each through
    huggingface_hub's PUT, each action named in the report, no secret in it; outside the
    window the endpoint gets no ping (a request would keep it awake)."""
    endpoint.set_state("scaledToZero")
    inside = make_warmup(env_for(worker, endpoint, endpoints_api, open_now()))
    first = inside(scheduled_event(), None)
    assert (endpoint.endpoint.min_replica, scaling_puts(endpoints_api)) == (1, [1])
    assert first["deployments"]["ep"]["wake"] == "min_replica_set"
    assert first["deployments"]["ep"]["status"] == "scaledToZero"
    assert first["deployments"]["ep"]["status_after"] == "initializing"
    assert "ep:set_min_replica=1" in first["actions"] and first["ok"] is True
    assert endpoints_api.running.wait(10), "raising min replicas did not start it"

    calls = len(endpoints_api.calls)
    again = inside(scheduled_event(), None)
    assert again["deployments"]["ep"]["wake"] == "unchanged"
    assert endpoints_api.calls[calls:] == [("GET", PATH)]
    assert again["health"]["ep"]["status"] == "ok"

    pings = len(endpoint.backend.seen)
    outside = make_warmup(env_for(worker, endpoint, endpoints_api, closed_now()))(
        scheduled_event(), None)
    assert (endpoint.endpoint.min_replica, scaling_puts(endpoints_api)) == (0, [1, 0])
    assert outside["deployments"]["ep"]["wake"] == "min_replica_set"
    assert outside["health"]["ep"] == {"status": "skipped", "reason": "outside_window"}
    assert len(endpoint.backend.seen) == pings
    for report in (first, again, outside):
        text = str(report)
        assert all(secret not in text for secret in SECRETS)
        assert endpoint.url not in text and endpoints_api.url not in text


@pytest.mark.parametrize(("window", "expected", "resumes"), [
    (open_now, ("resumed", "ep:resume"), 1),
    (closed_now, ("unchanged", None), 0),
])
def test_a_paused_endpoint_is_resumed_inside_the_window_only(
        make_warmup, worker: FakeBackend, endpoints_api: FakeEndpointsApi,
        endpoint: EndpointProxy, window: Any, expected: tuple[str, str | None], resumes: int):
    """GIVEN a paused endpoint (a request would not start it) WHEN the run fires inside, or
    outside, the window THEN inside it is resumed (HF: min and max replicas become 1), outside
    it stays paused and unbilled."""
    endpoint.set_state("paused")
    report = make_warmup(env_for(worker, endpoint, endpoints_api, window()))(
        scheduled_event(), None)
    assert report["deployments"]["ep"]["wake"] == expected[0]
    assert (expected[1] in report["actions"]) if expected[1] else report["actions"] == []
    assert endpoints_api.resumes == resumes


def test_a_failed_endpoint_is_reported_not_touched(make_warmup, worker: FakeBackend,
                                                   endpoints_api: FakeEndpointsApi,
                                                   endpoint: EndpointProxy):
    """GIVEN a failed endpoint WHEN the run fires inside the window THEN it is reported broken
    (HF: it must be created again), the run is not ok, and nothing is sent but the GET."""
    endpoint.set_state("failed")
    report = make_warmup(env_for(worker, endpoint, endpoints_api, open_now()))(
        scheduled_event(), None)
    assert (report["ok"], report["deployments"]["ep"]["wake"]) == (False, "broken")
    assert [call for call in endpoints_api.calls if call[0] != "GET"] == []


def test_an_endpoint_with_its_own_hub_token_and_a_hub_that_refuses_it(
        make_warmup, worker: FakeBackend, endpoints_api: FakeEndpointsApi,
        endpoint: EndpointProxy):
    """GIVEN an endpoint whose entry names its own Hub token (`hub_token=EP_HUB_TOKEN`), one
    the endpoints API refuses WHEN the run fires THEN its client is made with that token (not
    HF_TOKEN), the API's 401 is reported as a Hub error with its status, the run is not ok, and
    the token appears nowhere in the report."""
    env = env_for(worker, endpoint, endpoints_api, open_now())
    env["LLM_DEPLOYMENTS"] += " hub_token=EP_HUB_TOKEN"
    report = make_warmup({**env, "EP_HUB_TOKEN": "hf_notTheRightOne0000"})(
        scheduled_event(), None)
    assert report["deployments"]["ep"]["wake"] == "hub_error"
    assert report["deployments"]["ep"]["hub_status"] == 401 and report["ok"] is False
    assert "hf_notTheRightOne0000" not in str(report)
