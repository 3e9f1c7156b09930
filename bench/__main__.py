"""`make bench`: every benchmark in one run on this machine, as one markdown table.

    .venv/bin/python -m bench [--quick] [--runs 10] [--requests 2000] [--sleep-s 60] [--streams 200]
                              [--ai-space smollm2|tiny|skip] [--no-alternatives] [--no-engines]
                              [--out bench/results.md]

Cases alternate (cold runs case by case, warm requests path by path), and every figure is shown
beside a baseline measured in the same run. `--quick` is a smoke run (3 cold runs, 300 requests,
a 5 s sleeping Space, no ai_space): its figures are not the published ones.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

from bench import access as access_
from bench import cold as cold_
from bench import hostile as hostile_
from bench import streaming as streaming_
from bench import warm as warm_
from bench.ai_space import throughput
from bench.common import ROOT, load, machine
from bench.decision import decision_us
from bench.engines import bench_rows, side_by_side
from bench.sleeping import sleeping

log = logging.getLogger("bench")
# Inside README's bench section, the table sits between these two comments.
TABLE_START, TABLE_END = "<!-- bench:table -->", "<!-- bench:table:end -->"


def _ok(met: bool) -> str:
    return "**met**" if met else "**missed**"


def _cold_rows(figures: dict[str, dict[str, float]], skipped: dict[str, str],
               runs: int) -> list[str]:
    floor = figures[cold_.FLOOR_CASE]["median_ms"]
    working = figures[cold_.WORKING_CASE]["median_ms"]
    entry = figures[cold_.ENTRY_CASE]["median_ms"]
    head = f"cold start, median of {runs} fresh interpreters"
    rows = []
    for name, fig in figures.items():
        ratio = fig["median_ms"] / floor
        note, target = f"{ratio:.2f}x floor", ""
        if name == cold_.WORKING_CASE:
            note += " (first use of httpcore and pydantic's model machinery)"
        elif name == cold_.ENTRY_CASE:
            note += f"; {entry / working:.2f}x the working floor"
            target = f"≤ 1.3x floor: {_ok(ratio <= 1.3)}"
        elif name == cold_.LITELLM_CASE:
            faster = fig["median_ms"] / entry
            note += f"; `ask` is {faster:.0f}x faster"
            target = f"`ask` ≥ 15x faster: {_ok(faster >= 15)}"
        rows.append(f"| {head} | {name} | {fig['median_ms']:.1f} ms, peak RSS "
                    f"{fig['peak_rss_mib']:.1f} MiB | {note} | {target} |")
        head = ""
    rows += [f"| | {name} | not measured | {why} | |" for name, why in skipped.items()]
    return rows


def _warm_rows(figures: dict[str, dict[str, float]], skipped: dict[str, str],
               requests: int) -> list[str]:
    base = figures[warm_.DIRECT]
    over = {name: (f["p50_ms"] - base["p50_ms"], f["p99_ms"] - base["p99_ms"])
            for name, f in figures.items()}
    head = f"warm chat request, p50 / p99 of {requests} per path, alternating"
    rows = []
    for name, fig in figures.items():
        p50, p99 = over[name]
        note = "baseline" if name == warm_.DIRECT else f"overhead {p50:+.3f} / {p99:+.3f} ms"
        target = ""
        if name == warm_.IN_PROCESS:
            target = f"≤ 0.5 / 2 ms: {_ok(p50 <= 0.5 and p99 <= 2)}"
        elif name == warm_.GATEWAY and warm_.PORTKEY in over:
            pk50, pk99 = over[warm_.PORTKEY]
            target = f"below Portkey's: {_ok(p50 < pk50 and p99 < pk99)}"
        rows.append(f"| {head} | {name} | {fig['p50_ms']:.3f} / {fig['p99_ms']:.3f} ms | "
                    f"{note} | {target} |")
        head = ""
    rows += [f"| | {name} | not measured | {why} | |" for name, why in skipped.items()]
    return rows


def _sleep_rows(fig: dict[str, Any]) -> list[str]:
    sleep_s, own = fig["sleep_s"], fig["worker_own_ms"]
    first, direct = fig["router_first_answer_ms"], fig["direct_first_answer_s"]
    fallbacks = ", ".join(f"{k} x{v}" for k, v in fig["fallbacks_while_waking"].items())
    return [
        f"| Space asleep, wakes {sleep_s:.0f} s after a Hub restart | first answer of an `llm` "
        f"request through the router (falls back to the worker) | {first:.1f} ms | "
        f"`X-Chat-Fallback: {fig['first_answer_fallback']}`; the worker's own time "
        f"{own:.2f} ms, so the router added {first - own:.1f} ms, of which "
        f"{fig.get('wake_join_ms', float('nan')):.1f} ms waiting for the wake call to leave "
        f"(at most 250 ms) | "
        f"≤ 2 s + worker: {_ok(first <= 2000 + own)} |",
        f"| | first answer calling the Space directly (Hub restart, then retry each 1 s) | "
        f"{direct:.2f} s | {direct * 1000 / first:.0f}x the router's first answer; "
        f"{int(fig['direct_tries'])} tries | |",
        f"| | the Space serves again, after the router's wake request | "
        f"{fig['space_serving_after_wake_s']:.2f} s | the router asked the Hub "
        f"{fig.get('wake_request_after_ms', float('nan')):.1f} ms after the request arrived; "
        f"{int(fig['hub_restarts'])} restart | |",
        f"| | the router's first `llm` answer from the Space again (one request a second) | "
        f"{fig.get('router_space_again_s', float('nan')):.2f} s after the wake | meanwhile "
        f"answered by the worker: {fallbacks} | |",
    ]


def _ai_rows(result: dict[str, Any]) -> list[str]:
    by_mode: dict[str, list[str]] = {}
    for mode, conc, tok_s, req_s, _p50 in result["rows"]:
        by_mode.setdefault(mode, []).append(f"c={conc}: {tok_s:.1f} tok/s ({req_s:.2f} req/s)")
    head = (f"ai_space throughput, {result['model']} on CPU, max {result['max_tokens']} tokens "
            f"(bench/ai_space_bench.py)")
    rows = []
    for mode, cells in by_mode.items():
        rss = result["rss"].get(mode)
        slots = "MAX_CONCURRENCY=1" if mode == "sequential" else "MAX_CONCURRENCY=16"
        rows.append(f"| {head} | {mode} ({slots}) | {'; '.join(cells)} | "
                    f"server peak RSS {rss:.0f} MiB | |")
        head = ""
    return rows


def main() -> None:
    """Run everything, print the table and write it to --out."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--sleep-s", type=float, default=60)
    parser.add_argument("--streams", type=int, default=200,
                        help="streams per path for the service's added-latency figures")
    parser.add_argument("--ai-space", choices=["smollm2", "tiny", "skip"], default="smollm2")
    parser.add_argument("--no-alternatives", action="store_true")
    parser.add_argument("--no-engines", action="store_true",
                        help="skip the CPU engines side by side (bench/engines.py)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results.md"))
    parser.add_argument("--readme", action="store_true",
                        help="also put the table in README.md between the bench markers")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.requests, args.sleep_s, args.ai_space = 3, 300, 5.0, "skip"
        args.streams = 30
        args.no_engines = True
    alternatives = not args.no_alternatives
    started, load_before = time.monotonic(), load()

    log.info("cold start: %d runs per case", args.runs)
    cold_figs, cold_skip = cold_.cold(args.runs, alternatives=alternatives)
    log.info("warm overhead: %d requests per path", args.requests)
    warm_figs, warm_skip = warm_.warm(args.requests, alternatives=alternatives)
    log.info("access and quotas: token check, Redis quota (redis-server on loopback)")
    quota = access_.access(args.runs, args.requests)
    log.info("service streams: %d per path at concurrency 1, then a crowd", args.streams)
    streams = streaming_.streaming(args.streams)
    log.info("the service's door: hostile clients and one honest one (about 50 s)")
    door = hostile_.hostile()
    log.info("auto decision")
    decide = decision_us()
    log.info("sleeping Space: %.0f s", args.sleep_s)
    asleep = sleeping(args.sleep_s)
    ai = None
    if args.ai_space != "skip":
        log.info("ai_space throughput: %s (minutes)", args.ai_space)
        ai = throughput(args.ai_space)
    engines = None
    if not args.no_engines:
        log.info("CPU engines side by side (minutes)")
        # One thread: the worker's own setting on its one-vCPU instance, and the only one that
        # measures llama.cpp on a shared machine (with two, its barriers wait on the other).
        engines = side_by_side(threads=1, max_tokens=128)

    lines = [
        f"Measured by `make bench` on {machine()}, load average {load_before} at the start, "
        f"{(time.monotonic() - started) / 60:.1f} min in all"
        + (" (**--quick: a smoke run, not the published figures**)" if args.quick else "")
        + ".",
        "",
        "| benchmark | case | result | against the baseline | target |",
        "|---|---|---|---|---|",
        *_cold_rows(cold_figs, cold_skip, args.runs),
        *_warm_rows(warm_figs, warm_skip, args.requests),
        *access_.rows(quota, args.runs, args.requests),
        *streaming_.rows(streams),
        *hostile_.rows(door, hostile_.default_limits()),
        *_sleep_rows(asleep),
        f"| `auto` routing decision | p50 / p99 of 20,000 decisions | "
        f"{decide['p50_us']:.1f} / {decide['p99_us']:.1f} µs | | well under 1 ms: "
        f"{_ok(decide['p99_us'] < 1000)} |",
        *(_ai_rows(ai) if ai else []),
        *(bench_rows(engines) if engines else []),
        "",
    ]
    table = "\n".join(lines)
    Path(args.out).write_text(table)
    if args.readme:
        _splice_readme(table)
    sys.stdout.write(table)


def _splice_readme(table: str, readme: Path = ROOT / "README.md") -> None:
    """Replace the table between README's bench markers (the text around it stays)."""
    text = readme.read_text()
    start, end = text.index(TABLE_START), text.index(TABLE_END)
    readme.write_text(text[:start + len(TABLE_START)] + "\n" + table + text[end:])


if __name__ == "__main__":
    main()
