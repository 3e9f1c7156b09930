"""Run the reliability suite at full size and write its figures into the README.

    .venv/bin/python -m bench.reliability [--results FILE] [--out bench/reliability.md]

It runs `pytest tests/reliability` with RELIABILITY_FULL=1 (2,000-case fuzzes, 200 concurrent
clients) and RELIABILITY_RESULTS pointing at a JSON file the suite fills, then renders the
figures as markdown into `--out` and between the README's reliability markers. With
`--results FILE` it only renders an existing results file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
START, END = "<!-- reliability:start -->", "<!-- reliability:end -->"
SCENARIOS = ["space fails, worker answers", "worker fails, Space answers",
             "worker fails, no fallback"]

# Every bug the suite found, fixed in its own commit (git log --grep 'reliability suite').
BUGS = [
    ("router_tools/gateway.py", "load", "the gateway listened with a backlog of 5: a burst of 200 "
     "connections had 129 reset by the kernel; now 1024"),
    ("router/_schema.py", "fuzz", "an integer literal over 4,300 digits raised ValueError out of "
     "`main`; now 400 `invalid_json`"),
    ("router/_schema.py", "fuzz", "a lone surrogate escape (`\"\\ud800\"`) crashed `main` when "
     "httpx encoded the backend request; now 400 `invalid_json`"),
    ("router/_endpoints.py", "faults", "embeddings answers with fewer vectors than inputs were "
     "accepted (200 with inputs lost; IndexError on `/ai/embeddings`); now a protocol error"),
    ("router/_endpoints.py", "size limits", "a streamed (`stream: true`) answer skipped the 1 MB "
     "response cap; now capped too"),
    ("ai_space/app.py", "fuzz", "`/v1/models/` answered 307 with the server's own URL in "
     "`Location`; slash redirects are off, so a JSON 404"),
    ("ai_space/routes.py", "fuzz", "an embeddings input with a lone surrogate was a 500; now 400"),
    ("ai_space/errors.py", "schemathesis", "a 405 lost its `Allow` header"),
    ("ai_space/generation.py", "schemathesis", "a tiny positive temperature (5e-324) made "
     "sampling NaN and the request a 500; now greedy"),
    ("ai_space/routes.py, errors.py", "schemathesis", "the OpenAPI document listed a 422 never "
     "sent and none of 400/401/404/405/413/429/503, nor SSE answers"),
    # Found reading the suite's results; their tests are in tests/router/.
    ("router/_status.py", "faults", "a 504 carried no `X-Chat-Fallback`, so a timeout did not say "
     "why; now the last backend's reason"),
    ("router/_backends.py", "review", "backend answers were read whole with no cap, which a 128 MB "
     "function cannot survive; now refused past 2 MB while reading"),
    ("router/_app.py", "review", "an exception outside our tree escaped `main`, leaving the "
     "platform's bare 502; now a JSON 500 `internal_error`"),
    ("router_tools/gateway.py", "review, a flaky test", "a negative Content-Length crashed the "
     "handler thread; an oversize upload saw a reset, not the 413 (body not drained, no "
     "`Connection: close`)"),
    # Issue 11 (review): their tests are in tests/router/test_hardening.py.
    ("router/_fallback.py", "review", "callers sending `X-Chat-Deadline-Ms` at the floor opened a "
     "healthy Space's circuit for everyone; such timeouts and no-time-left attempts no longer "
     "count"),
    ("router/_backends.py", "review", "a drip-feeding backend held a pool thread past the "
     "deadline, and queued attempts were reported as sent; now each attempt is cancelled whole "
     "at its end (async), and sent only once its request left"),
    ("router/_endpoints.py", "review", "a backend's answer over 1 MB was a 413 (the caller's "
     "fault); now a fallback, or 502 `response_too_large`"),
    ("router/_fallback.py", "review", "the engine joined the wake thread for up to "
     "`WAKE_GRACE_MS` before answering; now only the function's edge waits, at most 250 ms"),
    ("ai_space/batching.py", "review", "a `seed` outside torch's range killed the batcher thread: "
     "every later request hung and `/health` still said ready; now a 400, one job's failure "
     "never stops the loop, and a dead loop is a 503"),
    ("router/_config.py", "review", "`LOG_LEVEL=LOUD` (any bad setting) raised out of `main`, "
     "the platform's bare 502; now 503 `misconfigured` naming the variable, in `ask` and "
     "`warmup`"),
    ("router/_config.py", "settings fuzz", "a token or key with a non-ASCII character, or a "
     "malformed backend URL, gave a 500 on every request; now `misconfigured`"),
    ("router/_config.py", "settings fuzz", "a model name holding an undecodable byte (a lone "
     "surrogate) crashed every request; every setting must be valid UTF-8"),
    ("router/_config.py", "settings fuzz", "a timeout of 2**70 ms passed, then raised "
     "OverflowError in the warmup's HTTP client and leaked its socket; `*_MS` settings are at "
     "most 900,000"),
    ("ai_space/errors.py", "review", "any unexpected exception became a 400 carrying its text; "
     "now a 500 with a request id, details in the log"),
]


def run_suite(results: Path) -> tuple[int, float]:
    """The full-size suite; its exit code and wall time."""
    env = {**os.environ, "RELIABILITY_FULL": "1", "RELIABILITY_RESULTS": str(results)}
    started = time.monotonic()
    code = subprocess.call([sys.executable, "-m", "pytest", "tests/reliability", "-q",
                            "-p", "no:cacheprovider"], cwd=ROOT, env=env)
    return code, time.monotonic() - started


def _statuses(counts: dict[str, int]) -> str:
    return ", ".join(f"{status}: {n}" for status, n in sorted(counts.items()))


def render(data: dict[str, Any], wall_s: float | None, passed: bool) -> str:
    """The reliability section as markdown."""
    out = ["Measured by `make reliability` (`python -m bench.reliability`): the suite in "
           "`tests/reliability` at full size, against real servers on loopback (the fakes of "
           "`tests/fakes`, and ai_space on tiny models)"
           + (f", {wall_s:.0f} s on this machine" if wall_s else "") + ". "
           + ("Every check passed." if passed else "**Some checks FAILED.**"), ""]
    faults = data.get("faults", {})
    names = sorted({key.split(" | ", 1)[1] for key in faults},
                   key=lambda n: list(dict.fromkeys(k.split(" | ", 1)[1] for k in faults)).index(n))
    out += ["**Faults × outcomes** (deadline 2,000 ms, the first backend's share 1,000 ms; "
            "each cell: status, who answered or the error code / `X-Chat-Fallback`; time; "
            "generation requests the failing backend received):", "",
            "| fault | " + " | ".join(SCENARIOS) + " |",
            "|---|" + "---|" * len(SCENARIOS)]
    for name in names:
        cells = []
        for scenario in SCENARIOS:
            cell = faults.get(f"{scenario} | {name}")
            cells.append(f"{cell['outcome']}; {cell['ms']} ms; sent {cell['sends']}"
                         if cell else "—")
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    out += ["", "Every answer came by the deadline + 100 ms. A generation was sent more than "
            "once only where the model never ran it (refused connection, 502, 429/503 with a "
            "`Retry-After` that fits)."]
    load = data.get("load", {}).get("figures")
    if load:
        out += ["", "**Load** (through the service, clients in a process of their own, the Space "
                "cycling awake / sleeping page / 503 every 150 ms):", "",
                "| figure | value |", "|---|---|",
                f"| concurrent clients × rounds | {load['clients']} × "
                f"{load['requests'] // load['clients']} = {load['requests']} requests in "
                f"{load['wall_s']} s |",
                f"| statuses | {_statuses(load['statuses'])} |",
                f"| answered by | {_statuses(load['answered_by'])} |",
                f"| latency p50 / p99 / max | {load['p50_ms']} / {load['p99_ms']} / "
                f"{load['max_ms']} ms (deadline {load['deadline_ms']} ms) |",
                f"| open sockets before / after | {load['sockets_before']} / "
                f"{load['sockets_after']} |",
                f"| threads before / after | {load['threads_before']} / "
                f"{load['threads_after']} (plus the router's one event-loop thread: "
                f"{load.get('pool_threads', '?')}) |"]
    fuzz, ai, schema = (data.get("fuzz_router", {}), data.get("fuzz_ai_space", {}),
                        data.get("schemathesis", {}))
    sec, secrets = data.get("security", {}), data.get("secrets", {})
    out += ["", "**Bad input and security:**", "", "| check | cases | result |", "|---|---|---|",
            f"| hypothesis fuzz of `ask` (bodies, headers, paths, base64 flags) | "
            f"{fuzz.get('cases', 0)} | {_statuses(fuzz.get('statuses', {}))}; no 5xx, "
            "no exception |",
            f"| hypothesis fuzz of ai_space | {ai.get('cases', 0)} | "
            f"{_statuses(data.get('fuzz_ai_space_status', {}))}; no 500 |",
            f"| schemathesis on ai_space's OpenAPI | {schema.get('cases', 0)} | "
            f"{_statuses(data.get('schemathesis_status', {}))}; all checks pass |",
            f"| missing / wrong / almost-right / misplaced tokens on worker and Space | "
            f"{sec.get('bad_tokens_refused', 0)} | all 401 |",
            f"| CORS origins tried on the function | {sec.get('cors_origins_checked', 0)} | "
            "granted to the configured origin only; ai_space grants none |",
            "| warmup function | — | `web: false`, no URL at the gateway |",
            f"| size limits | — | {sec.get('size_limits', '')} |",
            f"| secrets, tokens, backend URLs searched in every answer and log line | "
            f"{secrets.get('answers_scanned', 0)} answers, "
            f"{secrets.get('log_lines_scanned', 0)} log lines, "
            f"{secrets.get('secrets_searched', 0)} values | {secrets.get('leaks', '?')} found |"]
    out += ["", f"**Bugs found and fixed** ({len(BUGS)}, each in its own commit with a test in "
            "`tests/reliability/test_regressions.py` or `tests/router/`; "
            "failures found in the final run: "
            f"{0 if passed else 'see above'}):", "", "| where | found by | what |", "|---|---|---|"]
    out += [f"| `{where}` | {how} | {what} |" for where, how, what in BUGS]
    return "\n".join(out) + "\n"


def write_readme(section: str) -> None:
    """Replace what is between the README's reliability markers."""
    text = README.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{START}\n{section}{END}{tail}")


def main() -> int:
    """Run (or read), render, write."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results", type=Path, help="render this results file; run nothing")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "reliability.md")
    args = parser.parse_args()
    wall_s: float | None = None
    code = 0
    if args.results is None:
        with tempfile.TemporaryDirectory() as tmp:
            results = Path(tmp) / "results.json"
            code, wall_s = run_suite(results)
            if not results.exists():
                print("the suite wrote no results", file=sys.stderr)
                return code or 1
            data = json.loads(results.read_text())
    else:
        data = json.loads(args.results.read_text())
    section = render(data, wall_s, passed=code == 0)
    args.out.write_text("# Reliability figures\n\n" + section)
    write_readme(section)
    print(section)
    return code


if __name__ == "__main__":
    sys.exit(main())
