"""The generate stage against the local vLLM, next to vLLM's own benchmark client on the same prompts.

    python bench/vllm_generate_bench.py [--prompts FILE] [--num-prompts 100] [--concurrency 32]
                                        [--max-tokens 128] [--rounds 2]

One local vLLM (CPU build, tiny kit, "seinfeld" = its SFT adapter) serves both clients in turn, after an
unmeasured warm-up, alternating rounds so that neither gets a warmer server. Both send the same requests:
each prompt flattened to one user message (system brief + scene), n=3, temperature 0.9, no seed, at most
--max-tokens tokens, with at most --concurrency requests in flight. Prints one JSON line per run and a
summary: requests/s and output tokens/s of each client, and the engine's share of the benchmark client's
(target >= 0.95).

Prompts: the real SFT validation prompts when ../shared/data/sft_val.jsonl is there, else the sample.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
REAL_PROMPTS = ROOT.parent / "shared" / "data" / "sft_val.jsonl"
SAMPLE_PROMPTS = ROOT / "data" / "sample" / "prompts.jsonl"


def flat_prompts(source: Path, out: Path, count: int) -> int:
    """Write `{"prompt": "<system>\\n\\n<user>"}` lines: one user message each, the same for both clients."""
    rows = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
    written = 0
    with out.open("w") as f:
        while written < count:
            for row in rows:
                if written == count:
                    break
                prompt = row["prompt"]
                text = prompt if isinstance(prompt, str) else "\n\n".join(m["content"] for m in prompt)
                f.write(json.dumps({"prompt": f"{text}\n[take {written}]"}) + "\n")  # distinct rows, no dedup
                written += 1
    return written


def run_engine(server, prompts: Path, out: Path, args: argparse.Namespace) -> dict:
    from engine.options import RunOptions
    from stages.generate import GenerateSettings, run_generate

    settings = GenerateSettings(serve_url=server.base_url, model="seinfeld", n=3, temperature=0.9,
                                max_tokens=args.max_tokens, timeout_s=600)
    options = RunOptions(concurrency=args.concurrency, progress=False, limit=args.num_prompts)
    started = time.perf_counter()
    summary = asyncio.run(run_generate(prompts, out, settings, options, api_key=server.api_key))
    wall = time.perf_counter() - started
    rows = [json.loads(line) for line in summary.output.read_text().splitlines()]
    tokens = summary.counters.tokens_out
    return {"client": "engine", "requests": summary.counters.requests, "ok": summary.succeeded,
            "seconds": round(wall, 2), "req_per_s": round(summary.counters.requests / wall, 3),
            "output_tokens": tokens, "output_tok_per_s": round(tokens / wall, 1), "rows": len(rows)}


def run_vllm_bench(server, prompts: Path, tokenizer: Path, args: argparse.Namespace, result_dir: Path) -> dict:
    from vllm.benchmarks import serve as bench
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    bench.add_cli_args(parser)
    ns = parser.parse_args([
        "--backend", "openai-chat", "--base-url", server.url, "--endpoint", "/v1/chat/completions",
        "--model", "seinfeld", "--tokenizer", str(tokenizer), "--dataset-name", "custom",
        "--dataset-path", str(prompts), "--skip-chat-template", "--num-prompts", str(args.num_prompts),
        "--custom-output-len", str(args.max_tokens), "--max-concurrency", str(args.concurrency),
        "--temperature", "0.9", "--extra-body", json.dumps({"n": 3}), "--header",
        f"Authorization=Bearer {server.api_key}", "--disable-tqdm", "--save-result", "--result-dir",
        str(result_dir), "--result-filename", "bench.json", "--num-warmups", "0",
    ])
    started = time.perf_counter()
    result = bench.main(ns)
    wall = time.perf_counter() - started
    return {"client": "vllm bench serve", "requests": result["completed"], "ok": result["completed"],
            "seconds": round(result["duration"], 2), "wall_seconds": round(wall, 2),
            "req_per_s": round(result["request_throughput"], 3),
            "output_tokens": result.get("total_output_tokens"),
            "output_tok_per_s": round(result.get("output_throughput") or 0.0, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=Path, default=REAL_PROMPTS if REAL_PROMPTS.is_file() else SAMPLE_PROMPTS)
    parser.add_argument("--num-prompts", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    from serving.local_vllm import start_local_vllm
    from training.tiny import ensure_tiny_kit

    kit = ensure_tiny_kit()
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        prompts = tmp / "prompts.jsonl"
        flat_prompts(args.prompts, prompts, args.num_prompts)
        with start_local_vllm(kit.base_dir, {"seinfeld": kit.sft_adapter_dir}, timeout_s=300,
                              log_path=tmp / "vllm.log") as server:
            warm = argparse.Namespace(**{**vars(args), "num_prompts": args.concurrency})
            run_engine(server, prompts, tmp / "warm-up", warm)  # first requests load the adapter: not measured
            for i in range(args.rounds):
                for client in ("vllm", "engine") if i % 2 == 0 else ("engine", "vllm"):
                    if client == "engine":
                        run = run_engine(server, prompts, tmp / f"engine-{i}", args)
                    else:
                        run = run_vllm_bench(server, prompts, kit.base_dir, args, tmp / f"bench-{i}")
                    run["round"] = i
                    runs.append(run)
                    print(json.dumps(run), flush=True)
    engine = statistics.mean(r["req_per_s"] for r in runs if r["client"] == "engine")
    vllm = statistics.mean(r["req_per_s"] for r in runs if r["client"] != "engine")
    print(json.dumps({
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores, Python {platform.python_version()}",
        "prompts": str(args.prompts), "num_prompts": args.num_prompts, "concurrency": args.concurrency,
        "max_tokens": args.max_tokens, "n": 3, "engine_req_per_s": round(engine, 3),
        "vllm_bench_req_per_s": round(vllm, 3), "engine_share": round(engine / vllm, 3),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
