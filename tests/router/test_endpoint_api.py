"""The fake Inference Endpoints API is faithful to huggingface_hub's real client, and the
router's own httpx client (which `ask` uses, never importing huggingface_hub) reads and wakes
an endpoint exactly as huggingface_hub's HfApi does, against the same fake."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from huggingface_hub import InferenceEndpointStatus

from router._endpoint_api import EndpointRest, wake_endpoint
from router._hub import HubClient
from router._hub_rest import HubError
from tests.conftest import ENDPOINT_ID, HF_TOKEN
from tests.fakes.endpoints import EndpointProxy, FakeEndpointsApi

NAMESPACE, NAME = ENDPOINT_ID.split("/")


@pytest.fixture(autouse=True)
def _no_hub_token_file(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """huggingface_hub must never find a real token file or cache on this machine."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture
def clients(endpoints_api: FakeEndpointsApi) -> Iterator[tuple[HubClient, EndpointRest]]:
    """huggingface_hub's HfApi (through HubClient, aimed at the fake by HF_ENDPOINTS_API) and
    the router's EndpointRest, both with HF_TOKEN."""
    hub = HubClient("http://127.0.0.1:9", HF_TOKEN, timeout_s=5.0,
                    endpoints_api=endpoints_api.url)
    rest = EndpointRest(endpoints_api.url, HF_TOKEN)
    yield hub, rest
    rest.close()


def test_huggingface_hub_reads_the_fake_through_every_documented_state(
        clients: tuple[HubClient, EndpointRest], endpoint: EndpointProxy,
        endpoints_api: FakeEndpointsApi):
    """GIVEN a running endpoint in the fake WHEN huggingface_hub's real HfApi scales it to zero,
    resumes it, waits for it, pauses it, resumes it again and sets its minimum replicas THEN
    every answer parses into huggingface_hub's InferenceEndpoint with a documented status, the
    router's client sees the same status at each step, resuming a running endpoint is no error
    for either (huggingface_hub's `running_ok`), and a paused endpoint resumes with min and max
    replicas of 1 (HF's "Pause and Resume" guide)."""
    hub, rest = clients
    api = hub.api
    states = []

    def seen(raw_status: str) -> None:
        assert raw_status in {s.value for s in InferenceEndpointStatus}
        assert rest.get_inference_endpoint(NAME, namespace=NAMESPACE).status == raw_status
        states.append(raw_status)

    running = api.get_inference_endpoint(NAME, namespace=NAMESPACE)
    assert (running.status, running.url, running.repository) == (
        InferenceEndpointStatus.RUNNING, endpoint.url, "acme/chat-model")
    seen(running.status)
    seen(api.scale_to_zero_inference_endpoint(NAME, namespace=NAMESPACE).status)
    # The endpoint object keeps the token it was fetched with, for its own `wait`.
    resumed = api.resume_inference_endpoint(NAME, namespace=NAMESPACE, token=HF_TOKEN)
    seen(resumed.status)
    # huggingface_hub's own wait: it polls the API, then the endpoint's health route.
    assert resumed.wait(timeout=10, refresh_every=0.05).status == "running"  # type: ignore[arg-type]
    assert hub.resume_inference_endpoint(NAME, namespace=NAMESPACE).status == "running"
    assert rest.resume_inference_endpoint(NAME, namespace=NAMESPACE).status == "running"
    seen(api.pause_inference_endpoint(NAME, namespace=NAMESPACE).status)
    paused = rest.get_inference_endpoint(NAME, namespace=NAMESPACE)
    assert (paused.min_replica, paused.max_replica) == (0, 0)
    after = hub.resume_inference_endpoint(NAME, namespace=NAMESPACE)
    assert (after.status, after.min_replica, after.max_replica) == ("initializing", 1, 1)
    assert hub.update_inference_endpoint(NAME, namespace=NAMESPACE, min_replica=0).min_replica \
        == 0
    assert states == ["running", "scaledToZero", "initializing", "paused"]


@pytest.mark.parametrize(("state", "expected"), [
    ("scaledToZero", ("initializing", True)),
    ("paused", ("initializing", True)),
    ("initializing", ("initializing", False)),
    ("running", ("running", False)),
    ("failed", ("failed", False)),
])
def test_both_clients_wake_alike(clients: tuple[HubClient, EndpointRest],
                                 endpoint: EndpointProxy, endpoints_api: FakeEndpointsApi,
                                 state: str, expected: tuple[str, bool]):
    """GIVEN an endpoint in each state WHEN `wake_endpoint` runs with huggingface_hub's client,
    and (the state set again) with the router's own THEN both read the same status and resume
    only a scaled-to-zero or paused endpoint: never one running, starting or failed."""
    outcomes = []
    for client in clients:
        endpoint.set_state(state)
        before = endpoints_api.resumes
        outcomes.append((wake_endpoint(client, ENDPOINT_ID), endpoints_api.resumes - before))
    assert outcomes == [(expected, int(expected[1]))] * 2


def test_hub_failures_are_hub_errors_without_the_token(endpoints_api: FakeEndpointsApi,
                                                       endpoint: EndpointProxy):
    """GIVEN a wrong token, and an endpoint that does not exist WHEN the router's client reads
    them THEN HubError with the status (401, 404) and no token in its message."""
    wrong = EndpointRest(endpoints_api.url, "hf_wrongToken000")
    rest = EndpointRest(endpoints_api.url, HF_TOKEN)
    try:
        with pytest.raises(HubError) as unauthorized:
            wrong.get_inference_endpoint(NAME, namespace=NAMESPACE)
        with pytest.raises(HubError) as missing:
            rest.resume_inference_endpoint("nope", namespace=NAMESPACE)
    finally:
        wrong.close()
        rest.close()
    assert (unauthorized.value.status, missing.value.status) == (401, 404)
    assert "hf_" not in str(unauthorized.value) + str(missing.value)
