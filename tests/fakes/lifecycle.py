"""A fake Space whose edge follows the fake Hub's stage, as Hugging Face's does."""

from __future__ import annotations

import threading

from tests.fakes.hub import STARTING, FakeHub
from tests.fakes.openai_backend import FakeBackend


class SpaceLifecycle:
    """The Space's edge follows the Hub: asleep -> sleeping page; starting -> 503 for
    `start_s`, then the Hub reports RUNNING and the edge serves. `ready` is set then."""

    def __init__(self, hub: FakeHub, edge: FakeBackend, start_s: float) -> None:
        self.hub = hub
        self.edge = edge
        self.start_s = start_s
        self.ready = threading.Event()
        self.timers: list[threading.Timer] = []
        hub.listeners.append(self.on_stage)
        self.on_stage(hub.stage)

    def on_stage(self, stage: str) -> None:
        """Follow one Hub stage change."""
        if stage == "RUNNING":
            self.edge.mode = "ok"
            self.ready.set()
        elif stage in STARTING:
            self.edge.mode = "status:503"
            # The fake's own start-up time, not a test's synchronisation.
            timer = threading.Timer(self.start_s, self.hub.advance)
            timer.daemon = True
            self.timers.append(timer)
            timer.start()
        else:
            self.edge.mode = "sleeping"

    def stop(self) -> None:
        """Cancel pending start-ups."""
        for timer in self.timers:
            timer.cancel()
