"""The service's /metrics (router_service/_metrics.py): behind the function's credential, and
off with METRICS=false."""

from __future__ import annotations

import json

import httpx

from router_service import ServiceLimits
from tests.conftest import WORKER_TOKEN
from tests.fakes.openai_backend import FakeBackend
from tests.fakes.stream_backend import StreamBackend
from tests.support.loopback import LoopbackServer
from tests.support.service import serve_main

KEY = "metrics-key-0f3a9b7c2d"


def test_metrics_need_the_functions_key(make_main, worker: FakeBackend):
    """GIVEN the service with API_KEYS set WHEN /metrics is scraped without a key, with a wrong
    one, and with the key THEN 401, 401, and 200 in Prometheus' text format, where one chat
    already counts; and a POST is refused with 405."""
    main = make_main({"WORKER_URL": worker.url, "WORKER_TOKEN": WORKER_TOKEN, "API_KEYS": KEY})
    service = serve_main(main, namespace="scrape", port=0)
    url = f"http://{service.host}:{service.port}/metrics"
    try:
        with httpx.Client(timeout=10) as client:
            chat = client.post(service.function_url + "/v1/chat/completions",
                               headers={"authorization": f"Bearer {KEY}"},
                               json={"messages": [{"role": "user", "content": "hi"}]})
            anonymous = client.get(url)
            wrong = client.get(url, headers={"authorization": "Bearer nope-nope-nope"})
            scraped = client.get(url, headers={"authorization": f"Bearer {KEY}"})
            posted = client.post(url, headers={"authorization": f"Bearer {KEY}"})
    finally:
        service.stop()
    assert chat.status_code == 200
    assert (anonymous.status_code, wrong.status_code, posted.status_code) == (401, 401, 405)
    assert anonymous.json()["error"]["code"] == wrong.json()["error"]["code"]
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert ('router_requests_total{backend="worker",fallback="none",route="worker",'
            'status="200"} 1.0') in scraped.text


def test_metrics_off_serves_no_scrape_target(make_main, worker: FakeBackend):
    """GIVEN the service with METRICS=false WHEN /metrics is asked for THEN 404: nothing is
    counted or served."""
    main = make_main({"WORKER_URL": worker.url, "WORKER_TOKEN": WORKER_TOKEN})
    service = serve_main(main, namespace="scrape", port=0,
                         limits=ServiceLimits.from_env({"METRICS": "false"}))
    try:
        answer = httpx.get(f"http://{service.host}:{service.port}/metrics", timeout=10)
    finally:
        service.stop()
    assert answer.status_code == 404
    assert not main.__globals__["FUNCTION"].router().observer.active


def test_a_stream_no_backend_could_finish_is_counted_as_failed(make_main):
    """GIVEN the service whose only backend cuts its streams after 3 tokens WHEN a client
    streams a chat THEN it gets 200, content, then an error event; and /metrics counts one
    stream failure under that event's code, beside the request's 200."""
    fake = StreamBackend("worker", mode="cut", after=3)
    with LoopbackServer(fake) as server:
        main = make_main({"WORKER_URL": server.url, "WORKER_TOKEN": WORKER_TOKEN})
        service = serve_main(main, namespace="scrape", port=0)
        try:
            with httpx.Client(timeout=10) as client:
                with client.stream("POST", service.function_url + "/v1/chat/completions",
                                   json={"stream": True, "messages": [
                                       {"role": "user", "content": "hi"}]}) as response:
                    events = [line for line in response.iter_lines()
                              if line.startswith("data: ")]
                scraped = client.get(f"http://{service.host}:{service.port}/metrics").text
        finally:
            service.stop()
    code = json.loads(events[-1][6:])["error"]["code"]
    assert response.status_code == 200 and len(events) > 1
    assert f'router_stream_failures_total{{code="{code}"}} 1.0' in scraped
    assert ('router_requests_total{backend="worker",fallback="none",route="worker",'
            'status="200"} 1.0') in scraped
