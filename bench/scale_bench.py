"""Scale benchmark: generate against Modal-like replicas, the engine's memory up to 1M rows, resume after a kill.

    python bench/scale_bench.py                      # every section (~8 min on 2 cores)
    python bench/scale_bench.py --quick              # a smaller version (~2 min)
    python bench/scale_bench.py --generate --json out.json   # one section, figures as JSON

Sections (all by default; name some to run only those):
- --generate: the real generate stage (AsyncOpenAI over HTTP, the worker pool, the checkpoint) against the test
  server's replica model (testserver/replicas.py) with the replica bound (Modal's max_containers) at 1, 4 and 16,
  all replicas warm (replicas_min = replicas_max), so the figure isolates how throughput scales with replicas; then
  one run at 16 that starts from one warm replica and lets the autoscaler add the rest, each after a cold start.
- --memory: peak RSS of `engine.runner.run_stage` over 10k, 100k and 1M rows with a trivial in-process stage (one
  RowContext.request per row, answered without HTTP), each in a fresh process.
- --resume: 1M rows, SIGKILL about half way, then the resume's start-up (input pre-pass, checkpoint scan, changed-row
  check, the producer skipping the finished rows) until the first new row.
- --judge: judging under a tokens-per-minute budget (filled in by the live-judging pacer work).

Every child runs in a fresh process (peak RSS is per process); the test server is a process of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHART = ROOT / "docs" / "img" / "scale_generate.png"

# The replica model: times a batched L4 running a 3B model is in the range of, with short completions so a run
# takes seconds. A request's service time is PREFILL_S + tokens * TOKEN_LATENCY_S, ~1.0 s at MAX_TOKENS (the server
# reports the mean it applied; the ideal uses it). At 16 replicas x 8 inputs that is ~125 requests/s, which costs
# the client ~0.2 of a core at ~1.5 ms of CPU per request: the client is not the limit (see client_cpu_share).
MAX_INPUTS = 8  # @modal.concurrent(max_inputs): requests one replica runs at once
PREFILL_S = 0.1
TOKEN_LATENCY_S = 0.03
MAX_TOKENS = 32  # every sampled choice is cut to about this (sample_lines 3 is longer), so the service time is flat
BOUNDS = (1, 4, 16)
COLD_START_S = 5.0  # the autoscaled run's start-up delay per added replica (a real vLLM cold start takes minutes)
TARGET = 0.8  # of the ideal, at each bound


def _rss_now_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_prompts(path: Path, n: int) -> None:
    """`n` distinct chat prompts shaped like the SFT data's (a system and a user message, ~200 bytes a row)."""
    import orjson

    system = "You are a writer for the TV show Seinfeld. Continue the scene with natural dialogue."
    with open(path, "wb") as f:
        for start in range(0, n, 10_000):
            f.write(b"".join(
                orjson.dumps({"prompt": [{"role": "system", "content": system},
                                         {"role": "user", "content": f"[JERRY] Scene {i}: what's the deal?"}]})
                + b"\n" for i in range(start, min(n, start + 10_000))))


# -- generate against replicas ----------------------------------------------------------------------------------


def generate_child(bound: int, rows: int, replicas_min: int, startup_s: float) -> dict[str, Any]:
    from engine.options import RunOptions
    from stages.generate import GenerateSettings, run_generate
    from testserver import start_server

    server_options = {
        "log_size": 1,
        "replicas_max": bound,
        "replicas_min": replicas_min,
        "replica_max_inputs": MAX_INPUTS,
        "replica_startup_s": startup_s,
        "replica_prefill_s": PREFILL_S,
        "replica_token_latency_s": TOKEN_LATENCY_S,
        "replica_scaledown_s": 600.0,  # nothing stops during a run
        "sample_lines": [3, 3],  # longer than MAX_TOKENS: every choice is cut to about the same length
    }
    concurrency = bound * MAX_INPUTS  # enough in flight to fill every replica
    with tempfile.TemporaryDirectory() as tmp, start_server(**server_options) as server:
        prompts = Path(tmp) / "prompts.jsonl"
        write_prompts(prompts, rows)
        settings = GenerateSettings(serve_url=server.url, n=3, max_tokens=MAX_TOKENS, timeout_s=120)
        options = RunOptions(concurrency=concurrency, progress=False)
        cpu0 = time.process_time()
        started = time.monotonic()
        t0 = time.perf_counter()
        summary = asyncio.run(run_generate(prompts, Path(tmp) / "out", settings, options))
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        replicas = server.stats(log=False)["replicas"]
    shift = replicas["t0"] - started  # the timeline from the server's start to the run's
    replicas["timeline"] = [[round(t + shift, 3), ready, starting] for t, ready, starting in replicas["timeline"]]
    requests = summary.counters.requests
    service = replicas["service_mean_s"]
    capacity = bound * MAX_INPUTS / service  # requests/s with every replica busy
    out = {
        "bound": bound, "replicas_min": replicas_min, "startup_s": startup_s, "concurrency": concurrency,
        "rows": rows, "ok": summary.succeeded, "failed": summary.failed, "requests": requests,
        "wall_s": round(wall, 2), "requests_per_s": round(requests / wall, 2),
        "service_mean_s": service, "ideal_per_s": round(capacity, 2),
        "client_cpu_ms_per_request": round(1000 * cpu / requests, 3),
        "client_cpu_share": round(cpu / wall, 3),  # of one core
        "peak_replicas": replicas["peak_replicas"], "queue_wait_p95_s": replicas["queue_waits"]["p95_s"],
        "timeline": replicas["timeline"],
    }
    if replicas_min >= bound:
        out["ratio"] = round(out["requests_per_s"] / capacity, 3)
        # the same from the server's side: the first request's arrival to the last answer (no client start-up)
        out["busy_s"] = replicas["busy_s"]
        out["ratio_busy"] = round(requests / replicas["busy_s"] / capacity, 3)
    else:  # ideal: the warm replicas alone until the added ones are up, then all of them
        warm_rate = replicas_min * MAX_INPUTS / service
        head = min(requests, warm_rate * startup_s)
        ideal_wall = head / warm_rate + (requests - head) / capacity
        all_ready = next((t for t, ready, _ in replicas["timeline"] if ready == bound), None)
        out |= {"ideal_wall_s": round(ideal_wall, 2), "ratio": round(ideal_wall / wall, 3),
                "all_ready_at_s": all_ready}
    return out


def bench_generate(quick: bool) -> dict[str, Any]:
    seconds = 8 if quick else 20  # of steady work per run at the ideal rate
    # a service time of ~1.0 s: rows = ideal requests/s * seconds
    warm = [run_child("generate", bound=b, rows=int(b * MAX_INPUTS * seconds), replicas_min=b, startup_s=0.0)
            for b in BOUNDS]
    top = BOUNDS[-1]
    scaled = run_child("generate", bound=top, rows=int(top * MAX_INPUTS * (seconds + COLD_START_S)), replicas_min=1,
                       startup_s=COLD_START_S)
    return {"warm": warm, "autoscaled": scaled}


# -- memory and resume: the engine with a trivial stage -------------------------------------------------------------


class TrivialStage:
    """A generate-like stage whose request is answered in-process: one RowContext.request per row, a small record.
    What remains is the engine's own work per row: read, validate, id, schedule, pace, retry policy, write."""

    name = "generate"
    output_name = "completions"

    def __init__(self, trace_at: tuple[int, int] | None = None):
        self.processed = 0
        self.first_row_at: float | None = None
        self.trace_at = trace_at  # take tracemalloc snapshots when this many rows are done
        self.snapshots: list[Any] = []

    def settings(self) -> dict[str, Any]:
        return {"stage": "trivial"}

    def validate(self, obj: dict[str, Any]) -> dict[str, Any]:
        from engine.rows import validate_prompt_row

        return validate_prompt_row(obj)

    def stop_reason(self, counters: Any) -> None:
        return None

    async def process(self, row: Any, ctx: Any) -> dict[str, Any]:
        if self.first_row_at is None:
            self.first_row_at = time.perf_counter()
        self.processed += 1
        if self.trace_at and self.processed in self.trace_at:
            import tracemalloc

            self.snapshots.append(tracemalloc.take_snapshot())
        return await ctx.request(_answer)


async def _answer() -> dict[str, Any]:
    return {"completions": ["x", "y", "z"], "model": "trivial"}


def _run_trivial(stage: TrivialStage, prompts: Path, out: Path, concurrency: int = 64) -> Any:
    from engine.options import RunOptions
    from engine.runner import run_stage

    options = RunOptions(concurrency=concurrency, progress=False, fsync_every_s=2.0)
    return asyncio.run(run_stage(stage, prompts, out, options))


def rows_child(rows: int, trace: bool = False) -> dict[str, Any]:
    import engine.runner  # noqa: F401 (imported before the baseline is taken)

    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "prompts.jsonl"
        write_prompts(prompts, rows)
        stage = TrivialStage(trace_at=(rows // 10, rows - 64) if trace else None)
        if trace:
            import tracemalloc

            tracemalloc.start()
        baseline = _rss_now_mb()
        t0 = time.perf_counter()
        summary = _run_trivial(stage, prompts, Path(tmp) / "out")
        wall = time.perf_counter() - t0
    out = {"rows": rows, "ok": summary.succeeded, "wall_s": round(wall, 2), "rows_per_s": round(rows / wall),
           "rss_before_run_mb": round(baseline, 1), "peak_rss_mb": round(_peak_rss_mb(), 1)}
    if trace:
        early, late = stage.snapshots
        out["growth_by_line"] = [
            {"where": f"{s.traceback[0].filename.removeprefix(str(ROOT) + '/')}:{s.traceback[0].lineno}",
             "mb": round(s.size_diff / 2**20, 2), "blocks": s.count_diff}
            for s in late.compare_to(early, "lineno")[:8]
        ]
    return out


def bench_memory(quick: bool) -> list[dict[str, Any]]:
    sizes = (10_000, 100_000) if quick else (10_000, 100_000, 1_000_000)
    return [run_child("rows", rows=n) for n in sizes]


def run_child_until_killed(prompts: str, out: str) -> None:
    _run_trivial(TrivialStage(), Path(prompts), Path(out))


def resume_child(prompts: str, out: str) -> dict[str, Any]:
    """The resume run, its start-up timed phase by phase (wrappers around the engine's own functions)."""
    import engine.output as output
    import engine.runner as runner
    from engine.checkpoint import Checkpoint

    phases: dict[str, float] = {}

    def timed_async(name: str, fn: Any) -> Any:
        async def wrapper(*args: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return await fn(*args, **kw)
            finally:
                phases[name] = round(time.perf_counter() - t, 3)
        return wrapper

    scan = Checkpoint.scan

    def timed_scan(self: Checkpoint) -> Any:
        t = time.perf_counter()
        try:
            return scan(self)
        finally:
            phases["checkpoint_scan_s"] = round(time.perf_counter() - t, 3)

    output.prepass = timed_async("input_prepass_s", output.prepass)  # type: ignore[assignment]
    output.unchanged_rows = timed_async("changed_row_check_s", output.unchanged_rows)  # type: ignore[assignment]
    Checkpoint.scan = timed_scan  # type: ignore[method-assign]
    run_init = runner._Run.__init__

    def opened(self: Any, *args: Any, **kw: Any) -> None:  # the output is open: the runner starts
        phases["output_opened_at_s"] = round(time.perf_counter() - t0, 3)
        run_init(self, *args, **kw)

    runner._Run.__init__ = opened  # type: ignore[method-assign]
    stage = TrivialStage()
    baseline = _rss_now_mb()
    t0 = time.perf_counter()
    summary = _run_trivial(stage, Path(prompts), Path(out))
    wall = time.perf_counter() - t0
    first = None if stage.first_row_at is None else round(stage.first_row_at - t0, 3)
    return {"skipped_done_rows": summary.counters.done_before, "new_rows": summary.succeeded,
            "first_new_row_s": first, **phases, "wall_s": round(wall, 2),
            "rss_before_run_mb": round(baseline, 1), "peak_rss_mb": round(_peak_rss_mb(), 1)}


def _lines(path: Path) -> int:
    n = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            n += block.count(b"\n")
    return n


def bench_resume(quick: bool) -> dict[str, Any]:
    rows = 100_000 if quick else 1_000_000
    with tempfile.TemporaryDirectory() as tmp:
        prompts, out = Path(tmp) / "prompts.jsonl", Path(tmp) / "out"
        write_prompts(prompts, rows)
        results = out / "completions.jsonl"
        cmd = [sys.executable, __file__, "--child", "until-killed", json.dumps({"prompts": str(prompts),
                                                                              "out": str(out)})]
        child = subprocess.Popen(cmd)
        target = None
        t0 = time.perf_counter()
        while child.poll() is None:
            time.sleep(0.1)
            size = results.stat().st_size if results.exists() else 0
            if target is None and size > 1 << 20:  # the mean line length, from the first MiB
                with open(results, "rb") as f:
                    head = f.read(1 << 20)
                target = rows // 2 * len(head) / head.count(b"\n")
            if target is not None and size >= target:
                child.send_signal(signal.SIGKILL)
                break
        child.wait()
        run_s = time.perf_counter() - t0
        if child.returncode != -signal.SIGKILL:
            raise RuntimeError(f"the first run ended before the kill (exit {child.returncode}); raise the row count")
        lines_at_kill = _lines(results)
        resumed = run_child("resume", prompts=str(prompts), out=str(out))
        final = _lines(results)
    return {"rows": rows, "killed_after_s": round(run_s, 1), "lines_at_kill": lines_at_kill, **resumed,
            "lines_after_resume": final}


# -- judging under a tokens-per-minute budget -----------------------------------------------------------------------


JUDGE_TPM = 3_000_000  # the budget: ~3,300 requests a minute at ~900 tokens admitted each (a 2-core client keeps up)
JUDGE_MAX_COMPLETION = 256  # the judge's first budget, counted at admission with the prompt


def judge_child(rows: int, tpm: int) -> dict[str, Any]:
    """The live judge stage (real client, real pacer) over `rows` rows against the test server's OpenAI-style
    limiter at `tpm`: what was admitted, how many 429s, against what the budget allows over the run."""
    from engine.options import RunOptions
    from stages.judge import JudgeSettings, run_judge
    from testserver import PREFER_MARKER, start_server

    with tempfile.TemporaryDirectory() as tmp, start_server(tpm_limit=tpm, log_size=1) as server:
        completions = Path(tmp) / "completions.jsonl"
        system = "You are a writer for the TV show Seinfeld. Continue the scene with natural dialogue."
        with open(completions, "w") as f:
            for i in range(rows):
                prompt = [{"role": "system", "content": system}, {"role": "user", "content": f"[JERRY] Scene {i}."}]
                texts = [f"[JERRY] Scene {i} good. {PREFER_MARKER}", f"[GEORGE] Scene {i}, plain.",
                         f"[ELAINE] Scene {i}, plainer still."]
                f.write(json.dumps({"prompt": prompt, "completions": texts}) + "\n")
        settings = JudgeSettings(judge_model="gpt-5", judge_url=server.url, max_completion_tokens=JUDGE_MAX_COMPLETION)
        options = RunOptions(concurrency=64, tpm=tpm, progress=False)
        t0 = time.perf_counter()
        summary = asyncio.run(run_judge(completions, Path(tmp) / "out", settings, options, api_key="bench"))
        wall = time.perf_counter() - t0
        limits = server.stats(log=False)["rate_limits"]
    admitted = limits["admitted"]["gpt-5"]
    allowed = tpm + tpm * wall / 60  # a full bucket at the start, then the refill over the run
    return {"rows": rows, "tpm": tpm, "succeeded": summary.counters.succeeded, "wall_s": round(wall, 1),
            "requests": admitted["requests"], "tokens_admitted": admitted["tokens"],
            "tokens_per_request": round(admitted["tokens"] / max(1, admitted["requests"])),
            "share_of_budget": round(admitted["tokens"] / allowed, 3),
            "tokens_per_min_after_first": round((admitted["tokens"] - tpm) / max(wall, 1e-9) * 60),
            "http_429": sum(limits["refused"].values()), "rows_per_s": round(rows / wall, 1),
            "budget_wait_s": summary.counters.extra.get("budget_wait_s", 0)}


def judge_under_budget(quick: bool) -> dict[str, Any] | None:
    """Live judging paced to a tokens-per-minute budget (engine/limits.py) against the test server's limiter
    (testserver/ratelimit.py), in a fresh process: the 429 count and how much of the budget the run used."""
    return run_child("judge", rows=3_000 if quick else 10_000, tpm=JUDGE_TPM // (4 if quick else 1))


# -- driver -----------------------------------------------------------------------------------------------------------


def run_child(kind: str, **args: Any) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--child", kind, json.dumps(args)], capture_output=True,
                         text=True)
    if out.returncode != 0:
        raise RuntimeError(f"child {kind} {args} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


CHILDREN = {
    "generate": generate_child,
    "rows": rows_child,
    "until-killed": run_child_until_killed,
    "resume": resume_child,
    "judge": judge_child,
}


def chart(generate: dict[str, Any], path: Path) -> str:
    """Throughput vs replica bound (PNG via matplotlib when installed, else a markdown table); returns what it wrote."""
    warm = generate["warm"]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        path = path.with_suffix(".md")
        lines = ["| bound | req/s | ideal | ratio |", "|---|---|---|---|"]
        lines += [f"| {r['bound']} | {r['requests_per_s']} | {r['ideal_per_s']} | "
                  f"{'#' * round(20 * r['ratio'])} {r['ratio']} |" for r in warm]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
        return str(path)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    bounds = [r["bound"] for r in warm]
    left.plot(bounds, [r["ideal_per_s"] for r in warm], "--", color="grey", marker="o", label="ideal (bound x 8 / S)")
    left.plot(bounds, [r["requests_per_s"] for r in warm], color="C0", marker="o", label="generate stage, measured")
    for r in warm:
        left.annotate(f"{r['requests_per_s']:.3g}/s = {r['ratio']:.2f} of ideal", (r["bound"], r["requests_per_s"]),
                      textcoords="offset points", xytext=(-6, -16), ha="right" if r is warm[-1] else "left")
    left.set_xscale("log", base=2)
    left.set_yscale("log", base=2)
    left.set_xticks(bounds, [str(b) for b in bounds])
    ticks = [2**k for k in range(2, 9)]
    left.set_yticks(ticks, [str(t) for t in ticks])
    left.set_xlabel("replica bound (max_containers), all warm")
    left.set_ylabel("requests/s (n=3 each)")
    left.set_title("Throughput vs replicas (ratio to ideal)")
    left.legend(loc="upper left")
    scaled = generate["autoscaled"]
    t = [p[0] for p in scaled["timeline"]] + [scaled["wall_s"]]
    ready = [p[1] for p in scaled["timeline"]] + [scaled["timeline"][-1][1]]
    up = [p[1] + p[2] for p in scaled["timeline"]] + [scaled["timeline"][-1][1] + scaled["timeline"][-1][2]]
    right.step(t, up, where="post", color="C1", label="replicas up (starting + ready)")
    right.step(t, ready, where="post", color="C2", label="replicas ready")
    right.set_xlabel("seconds since the run started")
    right.set_ylabel("replicas")
    right.set_title(f"Autoscaling from 1 warm to {scaled['bound']} ({scaled['startup_s']:g} s cold start)")
    right.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return str(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generate", action="store_true", help="throughput vs replica bound")
    parser.add_argument("--memory", action="store_true", help="peak RSS at 10k, 100k, 1M rows")
    parser.add_argument("--resume", action="store_true", help="resume after a SIGKILL at half of 1M rows")
    parser.add_argument("--judge", action="store_true", help="live judging paced to a tokens-per-minute budget")
    parser.add_argument("--quick", action="store_true", help="shorter runs and 100k rows at most (~2 min)")
    parser.add_argument("--json", type=Path, help="write every figure to this JSON file")
    parser.add_argument("--chart", type=Path, default=CHART, help="throughput chart (PNG)")
    parser.add_argument("--trace", type=int, metavar="ROWS", help="where the engine's memory grows over ROWS rows "
                        "(tracemalloc, slow), printed as JSON")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "ARGS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = CHILDREN[args.child[0]](**json.loads(args.child[1]))
        if result is not None:
            print(json.dumps(result))
        return 0
    if args.trace:
        print(json.dumps(rows_child(args.trace, trace=True), indent=2))
        return 0
    everything = not (args.generate or args.memory or args.resume or args.judge)
    figures: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(), "quick": args.quick,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],  # other work sharing the cores skews times
    }
    print(f"# {figures['machine']}, Python {figures['python']}{' (quick)' if args.quick else ''}; load average "
          f"{figures['load_average_at_start']} at start", flush=True)
    if everything or args.generate:
        print(f"\n## generate vs replica bound (max_inputs {MAX_INPUTS}, service {PREFILL_S} s + tokens x "
              f"{TOKEN_LATENCY_S} s, max_tokens {MAX_TOKENS}, n=3, concurrency = bound x {MAX_INPUTS})", flush=True)
        g = figures["generate"] = bench_generate(args.quick)
        print("| bound | warm | rows | req/s | service s | ideal req/s | ratio | ratio, server's span | "
              "client CPU (core share) | queue p95 s |\n|---|---|---|---|---|---|---|---|---|---|")
        for r in [*g["warm"], g["autoscaled"]]:
            warm = "all" if r["replicas_min"] >= r["bound"] else f"{r['replicas_min']}, +{r['startup_s']:g} s starts"
            print(f"| {r['bound']} | {warm} | {r['rows']} | {r['requests_per_s']} | {r['service_mean_s']} | "
                  f"{r['ideal_per_s']} | **{r['ratio']}** | {r.get('ratio_busy', '-')} | "
                  f"{r['client_cpu_ms_per_request']} ms/req ({r['client_cpu_share']}) | {r['queue_wait_p95_s']} |")
        s = g["autoscaled"]
        print(f"- autoscaled: all {s['bound']} ready at {s['all_ready_at_s']} s; wall {s['wall_s']} s vs ideal "
              f"{s['ideal_wall_s']} s (1 warm replica for {s['startup_s']:g} s, then {s['bound']})")
        print(f"- client CPU at bound {BOUNDS[-1]}: {g['warm'][-1]['client_cpu_share']:.0%} of one core: "
              "the client is not the limit")
        ok = all(r["ratio"] >= TARGET for r in g["warm"])
        print(f"- target >= {TARGET} of ideal at every bound: {'met' if ok else 'NOT met'}")
        figures["chart"] = chart(g, args.chart)
        print(f"- chart: {figures['chart']}", flush=True)
    if everything or args.memory:
        print("\n## engine memory vs rows (trivial in-process stage, concurrency 64, fresh process each)", flush=True)
        m = figures["memory"] = bench_memory(args.quick)
        print("| rows | rows/s | RSS before run MB | peak RSS MB | growth MB |\n|---|---|---|---|---|")
        for r in m:
            print(f"| {r['rows']:,} | {r['rows_per_s']:,} | {r['rss_before_run_mb']} | {r['peak_rss_mb']} | "
                  f"{r['peak_rss_mb'] - r['rss_before_run_mb']:.1f} |")
        per_row = (m[-1]["peak_rss_mb"] - m[0]["peak_rss_mb"]) * 2**20 / (m[-1]["rows"] - m[0]["rows"])
        print(f"- {per_row:.0f} bytes of peak RSS per extra row ({m[0]['rows']:,} -> {m[-1]['rows']:,})", flush=True)
        figures["memory_bytes_per_row"] = round(per_row)
    if everything or args.resume:
        print("\n## resume after SIGKILL at half the rows", flush=True)
        r = figures["resume"] = bench_resume(args.quick)
        print(f"- {r['rows']:,} rows; killed after {r['killed_after_s']} s with {r['lines_at_kill']:,} rows written")
        print(f"- resume: skipped {r['skipped_done_rows']:,} done rows, first new row after **{r['first_new_row_s']} "
              f"s** (input pre-pass {r.get('input_prepass_s')} s, checkpoint scan {r.get('checkpoint_scan_s')} s, "
              f"changed-row check {r.get('changed_row_check_s')} s, the rest: the producer reading past done rows)")
        print(f"- then {r['new_rows']:,} new rows; {r['lines_after_resume']:,} lines in all; wall {r['wall_s']} s; "
              f"peak RSS {r['peak_rss_mb']} MB", flush=True)
    if everything or args.judge:
        print("\n## judging under a tokens-per-minute budget", flush=True)
        j = figures["judge"] = judge_under_budget(args.quick)
        print(f"- {j['rows']:,} rows at {j['tpm']:,} tokens/min ({j['tokens_per_request']:,} admitted per request): "
              f"**{j['http_429']} HTTP 429s**; {j['tokens_admitted']:,} tokens admitted in {j['wall_s']} s = "
              f"**{j['share_of_budget']:.1%} of what the budget allows** (a full bucket, then its refill); "
              f"{j['tokens_per_min_after_first']:,} tokens/min after the first minute's bucket; {j['rows_per_s']} "
              "rows/s", flush=True)
    figures["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(f"\nload average at the end: {figures['load_average_at_end']}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"\nfigures: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
