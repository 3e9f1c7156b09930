"""The choice within a tier (router/_choice.py), on its own: weights, in-flight counts, open
circuits, the order of the tiers and the reroute after a context-length refusal."""

from __future__ import annotations

from collections import Counter

from router._choice import Balancer, Route
from router._deployments import Deployment


def llm(name: str, weight: int = 1, context: int = 0) -> Deployment:
    """An LLM deployment (a plain OpenAI-compatible server)."""
    return Deployment(name, "llm", "openai", f"http://{name}.invalid", weight=weight,
                      context=context)


def first_of(balancer: Balancer, *tiers: list[Deployment]) -> str:
    """The name a fresh route picks first (its lease given back at once)."""
    chosen = Route(balancer, tiers).next()
    assert chosen is not None
    balancer.release(chosen.name)
    return chosen.name


def test_idle_picks_follow_the_weights_exactly():
    """GIVEN weights 3 and 1 and nothing in flight WHEN 400 requests each take their first
    choice THEN 300 and 100: the smooth weighted round-robin spreads them exactly."""
    a, b = llm("a", 3), llm("b", 1)
    balancer = Balancer([a, b], lambda name: False)
    assert Counter(first_of(balancer, [a, b]) for _ in range(400)) == {"a": 300, "b": 100}


def test_the_least_busy_for_its_weight_goes_first_and_open_circuits_are_passed_over():
    """GIVEN a (weight 2) holding 2 requests and b (weight 1) holding none WHEN a request
    chooses THEN b (0 < 1 per weight); with b's circuit open, a, though busier; with both
    open, the first of the tier (the loop records it as skipped)."""
    a, b = llm("a", 2), llm("b", 1)
    opened: set[str] = set()
    balancer = Balancer([a, b], lambda name: name in opened)
    balancer.lease("a")
    balancer.lease("a")
    assert first_of(balancer, [a, b]) == "b"
    opened.add("b")
    assert first_of(balancer, [a, b]) == "a"
    opened.add("a")
    assert first_of(balancer, [a, b]) == "b"
    assert balancer.in_flight == {"a": 2, "b": 0}


def test_a_route_spends_its_tier_before_the_other_each_deployment_once():
    """GIVEN an LLM tier of two and a small tier of one WHEN a route is walked to its end
    THEN both LLM deployments come before the worker, each once, and `has_more` says when the
    last is reached."""
    a, b = llm("a"), llm("b")
    worker = Deployment("worker", "small", "worker", "http://w.invalid")
    balancer = Balancer([a, b, worker], lambda name: False)
    route = Route(balancer, [[a, b], [worker]])
    walked = []
    while (chosen := route.next()) is not None:
        walked.append((chosen.name, route.has_more()))
        balancer.release(chosen.name)
    assert sorted(walked[:2]) == [("a", True), ("b", True)]
    assert walked[2] == ("worker", False)
    assert balancer.in_flight == {"a": 0, "b": 0, "worker": 0}


def test_after_a_context_refusal_larger_windows_then_unknown_ones_then_the_rest():
    """GIVEN d (8192, chosen first by weight), s (4096), u (window not known) in the LLM tier
    and c (32768) in the other WHEN d refuses a prompt as too long THEN c comes next (a larger
    window, though in the other tier), then u, then s."""
    d, s, u = llm("d", 1000, 8192), llm("s", 100, 4096), llm("u", 10)
    c = Deployment("c", "small", "openai", "http://c.invalid", context=32768)
    balancer = Balancer([d, s, u, c], lambda name: False)
    route = Route(balancer, [[d, s, u], [c]])
    first = route.next()
    assert first is d
    route.refused_as_too_long(d)
    order = []
    while (chosen := route.next()) is not None:
        order.append(chosen.name)
    assert order == ["c", "u", "s"]
