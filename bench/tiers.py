"""Issue 26's costs: the in-process time a request pays for tiers of deployments, A/B against a
baseline tree, and (with `bench.cold --deployments`) the cold start.

    .venv/bin/python -m bench.tiers [--baseline /tmp/base26] [--rounds 40] [--batch 50]

Each side is its own process running one tree's real `ask` entry in-process (`main(event,
ctx)`), against its own instant loopback backends (FakeBackend, answering at once), so that
neither shares an interpreter, a GIL or a cache with the other. The sides take turns, batch by
batch, and which goes first alternates by round, so a burst of load from elsewhere on the
machine hits them alike. Each request is an `llm` chat:

- baseline: the tree at `--baseline` (a worktree of main) with WORKER_URL and SPACE_URL;
- shorthand: this tree with the same two variables (every existing setup);
- three deployments: this tree with the LLM tier in LLM_DEPLOYMENTS (two Spaces and one
  Inference Endpoint, weights 1/1/2), its choice, in-flight counts and wake paths in play.

- the baseline again, as an A/A control: how far two identical sides drift apart here.

Reported: each side's median and p90 per-request time (ms), the difference of its median to
the baseline's, and the median of the per-round differences of medians against the baseline
(paired: each round's sides ran back to back).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.common import ROOT, load, machine, median, pct

# One side: a tree's entry and its fakes, run batch by batch on command from stdin.
CHILD = r"""
import json, os, sys, time
tree, spec = sys.argv[1], json.loads(sys.argv[2])
sys.path.insert(0, tree)
os.chdir(tree)
from tests.fakes.openai_backend import FakeBackend
from tests.support.loopback import LoopbackServer
servers = {}
for name in spec["fakes"]:
    fake = FakeBackend(name, token="tok-" + name)
    servers[name] = LoopbackServer(fake).start()
env = {}
for key, value in spec["env"].items():
    for name, server in servers.items():
        value = value.replace("{" + name + "}", server.url)
    env[key] = value
os.environ.update(env, LOG_LEVEL="WARNING")
from router_tools.gateway import load_entry
from router import FunctionContext
main = load_entry()
body = json.dumps({"model": "llm", "max_tokens": 8,
                   "messages": [{"role": "user", "content": "hi"}]})
event = {"http": {"method": "POST", "path": "/v1/chat/completions",
                  "headers": {"content-type": "application/json"}, "body": body,
                  "isBase64Encoded": False}}
print("ready", flush=True)
for line in sys.stdin:
    times, backends = [], {}
    for _ in range(int(line)):
        started = time.perf_counter()
        answer = main(event, FunctionContext.with_timeout(28_000))
        times.append((time.perf_counter() - started) * 1000.0)
        assert answer["statusCode"] == 200, answer
        name = answer["headers"]["x-chat-backend"]
        backends[name] = backends.get(name, 0) + 1
    print(json.dumps({"ms": times, "backends": backends}), flush=True)
"""

# Each side runs four fake servers (each a uvicorn thread in its process), whether it uses
# two or four, so that idle servers' ticks weigh on both sides alike.
SHORTHAND: dict[str, Any] = {
    "fakes": ["worker", "space", "idle-1", "idle-2"],
    "env": {"WORKER_URL": "{worker}", "WORKER_TOKEN": "tok-worker", "SPACE_URL": "{space}",
            "SPACE_TOKEN": "tok-space", "SPACE_ID": "owner/chat", "HF_TOKEN": "hf_" + "x" * 34}}
THREE: dict[str, Any] = {
    "fakes": ["worker", "space-a", "space-b", "ep"],
    "env": {"WORKER_URL": "{worker}", "WORKER_TOKEN": "tok-worker", "HF_TOKEN": "tok-ep",
            "SPACE_A_TOKEN": "tok-space-a", "SPACE_B_TOKEN": "tok-space-b",
            "LLM_DEPLOYMENTS": (
                "space-a kind=space url={space-a} token=SPACE_A_TOKEN id=owner/chat-a "
                "context=8192; space-b kind=space url={space-b} token=SPACE_B_TOKEN "
                "id=owner/chat-b context=8192; ep kind=endpoint url={ep} token=HF_TOKEN "
                "id=owner/chat-ep weight=2 context=32768")}}
BASELINE = "baseline (main, WORKER_URL + SPACE_URL)"
SAME = "this tree, WORKER_URL + SPACE_URL"
TIERS = "this tree, LLM tier of three deployments"
AGAIN = "baseline again (A/A control: the spread between two identical sides)"


class Side:
    """One side: a child process running a tree's entry against its own fakes."""

    def __init__(self, tree: Path, spec: dict[str, Any]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tree), json.dumps(spec)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     cwd=tree)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the side in {tree} did not start")

    def batch(self, count: int) -> dict[str, Any]:
        """Run `count` requests; their times (ms) and who answered them."""
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(f"{count}\n")
        self.proc.stdin.flush()
        result: dict[str, Any] = json.loads(self.proc.stdout.readline())
        return result

    def close(self) -> None:
        """End the child."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(30)


def compare(baseline: Path, rounds: int, batch: int) -> dict[str, Any]:
    """Per side: median and p90 ms, who answered, and the paired difference to the baseline."""
    sides = {BASELINE: Side(baseline, SHORTHAND), SAME: Side(ROOT, SHORTHAND),
             TIERS: Side(ROOT, THREE), AGAIN: Side(baseline, SHORTHAND)}
    try:
        for side in sides.values():
            side.batch(batch)  # warm-up, not counted
        times: dict[str, list[float]] = {name: [] for name in sides}
        medians: dict[str, list[float]] = {name: [] for name in sides}
        answered: dict[str, dict[str, int]] = {name: {} for name in sides}
        names = list(sides)
        for number in range(rounds):
            order = names[number % len(names):] + names[:number % len(names)]
            for name in order:
                result = sides[name].batch(batch)
                times[name] += result["ms"]
                medians[name].append(median(result["ms"]))
                for backend, count in result["backends"].items():
                    answered[name][backend] = answered[name].get(backend, 0) + count
    finally:
        for side in sides.values():
            side.close()
    base = median(times[BASELINE])
    return {name: {
        "median_ms": round(median(times[name]), 4), "p90_ms": round(pct(times[name], 90), 4),
        "median_minus_baseline_ms": round(median(times[name]) - base, 4),
        "paired_added_ms": round(median([m - b for m, b in zip(
            medians[name], medians[BASELINE], strict=True)]), 4),
        "answered_by": answered[name]} for name in sides}


def choice_us(repeat: int = 20_000) -> dict[str, float]:
    """The choice itself, in process: one request's Route through the tiers to its first
    deployment, and back (µs a request, best of 5), with the shorthand's tiers and with
    three LLM deployments: the part of the added time that the A/B sides cannot resolve."""
    import timeit

    from router import Settings

    out: dict[str, float] = {}
    for label, spec in (("shorthand", SHORTHAND), ("three deployments", THREE)):
        env = {}
        for key, value in spec["env"].items():
            for name in spec["fakes"]:
                value = value.replace("{" + name + "}", f"http://127.0.0.1:9/{name}")
            env[key] = value
        settings = Settings.from_env(env)
        out[label] = _time_route(settings, repeat, timeit.repeat)
    return out


def _time_route(settings: Any, repeat: int, timer: Any) -> float:
    # The router's per-container pieces, built as the function builds them.
    from router import ChatRouter

    router = ChatRouter(settings)
    endpoints, engine = router.endpoints, router.engine

    def one() -> None:
        route = endpoints._route("space", True)  # the plan's route for an `llm` request
        first = route.next()
        assert first is not None
        engine.balancer.release(first.name)

    best = float(min(timer(one, number=repeat, repeat=5))) / repeat * 1e6
    router.close()
    return round(best, 3)


def main() -> None:
    """Print the A/B figures as JSON, with the machine and its load."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--baseline", default="/tmp/base26",
                        help="a worktree of the tree to compare with (git worktree add ...)")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--batch", type=int, default=50)
    args = parser.parse_args()
    before = load()
    figures = compare(Path(args.baseline), args.rounds, args.batch)
    print(json.dumps({"machine": machine(), "load_before": before, "load_after": load(),
                      "rounds": args.rounds, "batch": args.batch, "figures": figures,
                      "choice_us": choice_us()}, indent=1))


if __name__ == "__main__":
    main()
