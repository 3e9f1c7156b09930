"""Metrics and traces name the deployment (issue 26), with configured names only: the label
set stays bounded whatever callers send."""

from __future__ import annotations

import re

import httpx

from tests.conftest import WORKER_TOKEN
from tests.fakes.otlp import OtlpReceiver
from tests.support.loopback import LoopbackServer
from tests.support.service import serve_main
from tests.support.tiers import deployments, llm_env

KEY = "labels-key-5e6f7a8b9c"


def test_metrics_and_spans_carry_only_configured_deployment_names(make_main, worker):
    """GIVEN an LLM tier of gpu-a (failing, 503) and gpu-b (serving model `model-b`) behind the
    service, with metrics and traces on WHEN a caller sends `llm` chats, a chat naming an
    unknown model and one naming a deployment THEN the answer names gpu-b; gpu-a's attempt span
    carries its failure and gpu-b's its model; the request span says which deployment answered;
    and every `backend` label in /metrics is a configured name (or `none`)."""
    receiver = OtlpReceiver()
    with deployments("gpu-a", "gpu-b") as gpus, LoopbackServer(receiver) as otlp:
        gpus["gpu-a"].mode = "status:503"
        main = make_main({"WORKER_URL": worker.url, "WORKER_TOKEN": WORKER_TOKEN,
                          "API_KEYS": KEY, "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url,
                          **llm_env(gpus, gpu_a="weight=1000", gpu_b="model=model-b")})
        service = serve_main(main, namespace="labels", port=0)
        try:
            with httpx.Client(timeout=10, headers={"authorization": f"Bearer {KEY}"}) as client:
                url = service.function_url + "/v1/chat/completions"
                answer = client.post(url, json={"model": "llm", "messages": [
                    {"role": "user", "content": "hi"}]})
                odd = [client.post(url, json={"model": model, "messages": [
                    {"role": "user", "content": "hi"}]}) for model in ("x" * 40, "gpu-a")]
                scraped = client.get(f"http://{service.host}:{service.port}/metrics").text
        finally:
            service.stop()
        spans = receiver.wait_for(5, 10)
    assert (answer.status_code, answer.headers["x-chat-backend"]) == (200, "gpu-b")
    assert answer.headers["x-chat-fallback"] == "unavailable"
    assert [reply.status_code for reply in odd] == [400, 400]
    attempts = sorted((s for s in spans if s.kind == 3), key=lambda s: s.start_ns)
    assert [(s.attributes["chat.backend"], s.attributes.get("error.type")) for s in attempts] \
        == [("gpu-a", "unavailable"), ("gpu-b", None)]
    assert attempts[1].attributes["gen_ai.request.model"] == "model-b"
    served = next(s for s in spans if s.kind == 2 and s.attributes.get("chat.backend"))
    assert served.attributes["chat.backend"] == "gpu-b"
    labels = set(re.findall(r'backend="([^"]*)"', scraped))
    assert labels <= {"worker", "gpu-a", "gpu-b", "none"}
    assert {"gpu-a", "gpu-b", "worker"} <= labels
    assert 'router_circuit_state{backend="gpu-a",state="closed"} 1.0' in scraped
    assert re.search(r'router_requests_total\{backend="gpu-b",fallback="unavailable",'
                     r'route="space",status="200"\} 1\.0', scraped)
