"""Engine benchmark: throughput vs the ideal C/L, client CPU per request, peak RSS, resume-scan time.

    python bench/engine_bench.py                 # the README's table (several minutes)
    python bench/engine_bench.py --quick         # a smaller smoke version
    python bench/engine_bench.py --one 64 0.5 5000   # one configuration, printed as JSON

Each configuration runs in a fresh process (peak RSS is per process) against the local test server
(a separate process, so it does not share the client's core), through the real generate stage:
AsyncOpenAI over HTTP, the worker pool, the checkpoint writer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_prompts(path: Path, n: int) -> None:
    import orjson

    system = "You are a writer for the TV show Seinfeld. Continue the scene with natural dialogue."
    with open(path, "wb") as f:
        for i in range(n):
            row = {"prompt": [{"role": "system", "content": system},
                              {"role": "user", "content": f"[JERRY] Bench scene {i}: what's the deal with this?"}]}
            f.write(orjson.dumps(row) + b"\n")


def one(concurrency: int, latency: float, rows: int) -> dict:
    from engine.options import RunOptions
    from stages.generate import GenerateSettings, run_generate
    from testserver import start_server

    with tempfile.TemporaryDirectory() as tmp, start_server(latency=latency, log_size=1) as server:
        prompts = Path(tmp) / "prompts.jsonl"
        write_prompts(prompts, rows)
        settings = GenerateSettings(serve_url=server.url, n=3, max_tokens=64, timeout_s=60)
        options = RunOptions(concurrency=concurrency, progress=False)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        summary = asyncio.run(run_generate(prompts, Path(tmp) / "out", settings, options))
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        requests = summary.counters.requests
    ideal = concurrency / latency if latency > 0 else float("nan")
    return {
        "concurrency": concurrency,
        "latency_s": latency,
        "rows": rows,
        "ok": summary.succeeded,
        "failed": summary.failed,
        "wall_s": round(wall, 2),
        "requests_per_s": round(requests / wall, 1),
        "ideal_per_s": round(ideal, 1),
        "efficiency": round(requests / wall / ideal, 3) if latency > 0 else None,
        "client_cpu_ms_per_request": round(1000 * cpu / requests, 3),
        "rss_before_run_mb": round(rss_before, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


class SleepStage:
    """A stage whose 'request' is asyncio.sleep(L): the engine's own overhead, without HTTP or the SDK."""

    name = "sleep"
    output_name = "completions"

    def __init__(self, latency: float):
        self.latency = latency

    def settings(self) -> dict:
        return {"latency": self.latency}

    def validate(self, obj: dict) -> dict:
        from engine.rows import validate_prompt_row

        return validate_prompt_row(obj)

    def stop_reason(self, counters) -> None:  # noqa: ANN001
        return None

    async def process(self, row, ctx) -> dict:  # noqa: ANN001
        await ctx.request(lambda: asyncio.sleep(self.latency))
        return {"prompt": row.data["prompt"], "completions": ["x", "y", "z"]}


def engine_only(concurrency: int, latency: float, rows: int) -> dict:
    from engine.options import RunOptions
    from engine.runner import run_stage

    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "prompts.jsonl"
        write_prompts(prompts, rows)
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        summary = asyncio.run(run_stage(SleepStage(latency), prompts, Path(tmp) / "out",
                                        RunOptions(concurrency=concurrency, progress=False)))
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
    requests = summary.counters.requests
    ideal = concurrency / latency
    return {"concurrency": concurrency, "latency_s": latency, "rows": rows, "requests_per_s": round(requests / wall, 1),
            "ideal_per_s": ideal, "efficiency": round(requests / wall / ideal, 3),
            "engine_cpu_ms_per_row": round(1000 * cpu / requests, 3)}


def scan(rows: int) -> dict:
    """Time the resume scan of a checkpoint with `rows` realistic rows (3 completions of ~1.7 kB each)."""
    import orjson

    from engine.checkpoint import Checkpoint

    completion = "[JERRY] " + "What is the deal with airline food? " * 45
    with tempfile.TemporaryDirectory() as tmp:
        ck = Checkpoint(Path(tmp), "completions")
        with open(ck.results, "wb") as f:
            for i in range(rows):
                rec = {"id": f"{i:016x}", "input": f"{i * 7:016x}",  # as the writer puts them: id, input first
                       "prompt": [{"role": "user", "content": "[GEORGE] scene " * 50}],
                       "completions": [completion] * 3, "model": "seinfeld"}
                f.write(orjson.dumps(rec) + b"\n")
        size_mb = ck.results.stat().st_size / 1e6
        os.sync()
        t0 = time.perf_counter()
        done = ck.scan().done
        elapsed = time.perf_counter() - t0
    assert len(done) == rows and done[f"{rows - 1:016x}"] == f"{(rows - 1) * 7:016x}"
    return {"scan_rows": rows, "file_mb": round(size_mb, 1), "scan_s": round(elapsed, 3)}


def run_child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--one", nargs=3, metavar=("C", "L", "N"))
    parser.add_argument("--scan", type=int)
    parser.add_argument("--engine-only", nargs=3, metavar=("C", "L", "N"))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(int(args.one[0]), float(args.one[1]), int(args.one[2]))))
        return
    if args.engine_only:
        print(json.dumps(engine_only(int(args.engine_only[0]), float(args.engine_only[1]), int(args.engine_only[2]))))
        return
    if args.scan:
        print(json.dumps(scan(args.scan)))
        return
    print(f"# machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    if args.quick:
        configs = [(64, 0.5, 1000), (256, 0.5, 2000)]
        rss_configs = [(64, 0.05, 1000), (64, 0.05, 10_000)]
        scan_rows = 10_000
    else:
        configs = [(64, 0.5, 5000), (256, 0.5, 5000)]
        rss_configs = [(256, 0.05, 1000), (256, 0.05, 100_000)]
        scan_rows = 100_000
    print("\n## throughput (generate stage, n=3, against the test server)")
    print("| C | L (s) | rows | req/s | ideal C/L | efficiency | client CPU ms/req | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    for c, lat, n in configs:
        r = run_child("--one", str(c), str(lat), str(n))
        print(f"| {c} | {lat} | {n} | {r['requests_per_s']} | {r['ideal_per_s']} | {r['efficiency']} | "
              f"{r['client_cpu_ms_per_request']} | {r['peak_rss_mb']} |", flush=True)
    print("\n## the engine alone (each request is asyncio.sleep(L): no HTTP, no SDK)")
    for c, lat, n in configs:
        r = run_child("--engine-only", str(c), str(lat), str(n))
        print(f"- C={c}, L={lat}s, N={n}: {r['requests_per_s']} req/s of {r['ideal_per_s']} ideal, efficiency "
              f"{r['efficiency']}, engine CPU {r['engine_cpu_ms_per_row']} ms/row", flush=True)
    print("\n## memory: peak RSS as rows grow")
    peaks = []
    for c, lat, n in rss_configs:
        r = run_child("--one", str(c), str(lat), str(n))
        peaks.append(r["peak_rss_mb"])
        print(f"- C={c}, L={lat}s, N={n}: peak RSS {r['peak_rss_mb']} MB "
              f"({r['requests_per_s']} req/s, {r['client_cpu_ms_per_request']} CPU ms/req)", flush=True)
    print(f"- growth: {peaks[-1] - peaks[0]:.1f} MB")
    print("\n## resume scan")
    r = run_child("--scan", str(scan_rows))
    print(f"- {r['scan_rows']:,} rows ({r['file_mb']} MB): {r['scan_s']} s")


if __name__ == "__main__":
    main()
