#!/usr/bin/env python3
"""What Prometheus metrics cost moss: the send and sync workloads of bench/run.py (workloads 1–4)
on the same binary with `metrics.bind` unset (no timings taken) and set (every request, database
transaction and media operation timed), while a scraper reads /metrics every second as
Prometheus would. The two variants alternate (and which goes first), ROUNDS times each, on fresh
data directories; the
report gives each row's median per variant and the cost (target: < 3% on the send and sync
rows).

    .venv-synapse/bin/python bench/metrics.py --moss target/release/moss [--quick] [--out DIR]

Writes DIR/<when>-metrics.md (and .json); prints the table. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import run  # noqa: E402  (bench/run.py: the Moss server and the workloads)

ROWS = [
    ("sequential send (events/s)", "seq_send", "events_per_s", "higher"),
    ("sequential send p50 (ms)", "seq_send", "p50_ms", "lower"),
    ("concurrent send (events/s)", "concurrent_send", "events_per_s", "higher"),
    ("delivery to a long-poll p99 (ms)", "delivery", "p99_ms", "lower"),
    ("initial sync (ms)", "initial_sync", "median_ms", "lower"),
    ("no-op incremental sync p50 (ms)", "noop_sync", "p50_ms", "lower"),
]


async def scrape_forever(port: int, counter: list[int]) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
                    await r.read()
                    counter[0] += r.status == 200
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(1)


async def one(binary: Path, work: Path, quick: bool, metrics: bool) -> dict:
    env = {}
    port = run.free_port()
    if metrics:
        env["MOSS_METRICS__BIND"] = f"127.0.0.1:{port}"
    work.mkdir(parents=True)
    server = run.Moss(work, binary, env)
    await server.start()
    scrapes = [0]
    scraper = asyncio.create_task(scrape_forever(port, scrapes)) if metrics else None
    try:
        out = await run.workloads(server, quick)
    finally:
        if scraper:
            scraper.cancel()
        server.stop()
    out["scrapes"] = scrapes[0]
    return out


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moss", type=Path, required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=None, help="runs per variant (default 3, quick 1)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    args.moss = args.moss.resolve()
    rounds = args.rounds or (1 if args.quick else 3)
    results: dict[str, list[dict]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory(prefix="moss-bench-metrics-") as tmp:
        for i in range(rounds):
            # Which goes first alternates too, so that neither always runs on a cooler machine.
            for variant in (("off", "on") if i % 2 == 0 else ("on", "off")):
                print(f"round {i + 1}/{rounds}: metrics {variant} …", flush=True)
                results[variant].append(await one(args.moss, Path(tmp) / f"{variant}{i}", args.quick, variant == "on"))

    def median(variant: str, group: str, key: str) -> float:
        vals = [r[group][key] for r in results[variant] if group in r and key in r[group]]
        return statistics.median(vals) if vals else float("nan")

    when = time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime())
    lines = [
        f"# moss with and without metrics ({'quick' if args.quick else 'full'})",
        "",
        f"{when} · `{args.moss}` · {rounds} round(s) per variant, alternating; with metrics, /metrics "
        "scraped every second during the run.",
        "",
        "| | metrics off | metrics on | cost |",
        "|---|---|---|---|",
    ]
    for title, group, key, better in ROWS:
        off, on = median("off", group, key), median("on", group, key)
        cost = (off / on - 1) * 100 if better == "higher" else (on / off - 1) * 100
        lines.append(f"| {title} | {off:.2f} | {on:.2f} | {cost:+.1f}% |")
    lines += ["", f"Scrapes answered during the runs with metrics: {[r['scrapes'] for r in results['on']]}.", ""]
    text = "\n".join(lines)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{when}-metrics.md").write_text(text)
    (args.out / f"{when}-metrics.json").write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    asyncio.run(main())
