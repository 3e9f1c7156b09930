"""Choosing a deployment: weighted least-busy within a tier, the next of the tier on a
failure, then the other tier; a longer context first after a context-length refusal.

`Balancer` is per container: each deployment's requests in flight, and the smooth weighted
round-robin (nginx's) that breaks ties. `Route` is per request: the fallback loop
(router/_fallback.py) asks it for the next deployment at each turn, so every choice sees the
in-flight counts and breakers as they are then, under the request's one deadline.

In the function a container serves one request at a time, so every deployment is idle at each
choice and the round-robin alone spreads them by weight (its phase is random per container, so
that many fresh containers do not all start on the same one). In the service, requests overlap
and the in-flight counts lead: a slower deployment holds its requests longer and gets fewer.
Everything here runs on the router's event loop (one thread), so nothing is locked.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from router._deployments import Deployment


class Balancer:
    """Per container: requests in flight per deployment, and the weighted choice."""

    def __init__(self, deployments: Sequence[Deployment],
                 is_open: Callable[[str], bool]) -> None:
        self.in_flight = {d.name: 0 for d in deployments}
        # Smooth weighted round-robin's running scores; a random phase per container.
        self._score = {d.name: random.uniform(0.0, d.weight) for d in deployments}
        self._is_open = is_open

    def pick(self, candidates: Sequence[Deployment]) -> Deployment:
        """The least busy for its weight among those whose circuit is not open (all of them,
        when every circuit is open: the loop then records each as skipped); ties by weight."""
        if len(candidates) == 1:
            return candidates[0]
        ready = [d for d in candidates if not self._is_open(d.name)] or list(candidates)
        load = {d.name: self.in_flight[d.name] / d.weight for d in ready}
        least = min(load.values())
        tied = [d for d in ready if load[d.name] == least]
        if len(tied) == 1:
            return tied[0]
        total = 0
        for d in tied:
            self._score[d.name] += d.weight
            total += d.weight
        best = max(tied, key=lambda d: self._score[d.name])
        self._score[best.name] -= total
        return best

    def lease(self, name: str) -> None:
        """A request goes to `name`."""
        self.in_flight[name] += 1

    def release(self, name: str) -> None:
        """A request to `name` has ended, however it ended."""
        self.in_flight[name] -= 1


class Route:
    """One request's way through the deployments: its tiers in order (the policy's choice
    first), each deployment at most once."""

    __slots__ = ("_balancer", "_longer_than", "_tiers")

    def __init__(self, balancer: Balancer, tiers: Sequence[Sequence[Deployment]]) -> None:
        self._balancer = balancer
        self._tiers = [list(tier) for tier in tiers if tier]
        # After a context-length refusal: the window it refused with (tokens).
        self._longer_than: int | None = None

    def next(self) -> Deployment | None:
        """The deployment to turn to now (leased: the loop releases it), or None when every
        one has had its turn."""
        while self._tiers and not self._tiers[0]:
            self._tiers.pop(0)
        if not self._tiers:
            return None
        pool = self._tiers[0] if self._longer_than is None else self._longer_pool()
        chosen = self._balancer.pick(pool)
        for tier in self._tiers:
            if chosen in tier:
                tier.remove(chosen)
                break
        self._balancer.lease(chosen.name)
        return chosen

    def has_more(self) -> bool:
        """Whether a deployment is left after this one."""
        return any(self._tiers)

    def refused_as_too_long(self, deployment: Deployment) -> None:
        """`deployment` refused the request as longer than its window: from now on, one with
        a larger known window goes first (this tier's, then the other's), then those whose
        window is not known, then the rest."""
        if deployment.context:
            self._longer_than = max(self._longer_than or 0, deployment.context)

    def _longer_pool(self) -> list[Deployment]:
        limit = self._longer_than or 0
        for wanted in (lambda d: d.context > limit, lambda d: not d.context,
                       lambda d: True):
            for tier in self._tiers:
                pool = [d for d in tier if wanted(d)]
                if pool:
                    return pool
        return []  # pragma: no cover - `next` only asks while a deployment is left
