"""Local sampling against its ceiling: the local profile's vLLM next to the same base without LoRA and plain
transformers `generate`, on the SmolLM2 kit, one run, same scenes, same sampling.

    python bench/local_serving_bench.py [--scenes 48] [--n 3] [--max-tokens 32] [--concurrency 24] [--eager-ceiling]

1. `local`: the local profile's server as `make run` starts it (serving/local_vllm.py: the SFT adapter as
   "seinfeld", LoRA sized to the adapter, whole-prompt prefills), sampled as the generate stage does.
2. `no-lora`: the base alone, no LoRA, compiled (vLLM's default; `--eager-ceiling` keeps `--enforce-eager`):
   the ceiling of what this CPU does with this model.
3. `transformers`: `generate` with the PEFT adapter, all samples in one batch (what a script would do).

Prints one JSON line per server and the ratio of `local` to `no-lora` (issue 28's target: >= 0.5). Each
figure is completion tokens over the wall time of the requests, servers already up; start-up times are printed
apart. Run it alone: anything else on the two cores shows in the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SCENES = ROOT / "data" / "local" / "scenes.jsonl"


def scenes(count: int) -> list[list[dict]]:
    rows = [json.loads(line) for line in SCENES.read_text().splitlines() if line.strip()]
    return [row["prompt"] for row in rows[:count]]


async def sample(server, model: str, prompts: list[list[dict]], args: argparse.Namespace) -> int:
    """Completion tokens for every prompt x n, at most --concurrency requests in flight."""
    import openai

    gate = asyncio.Semaphore(args.concurrency)
    async with openai.AsyncOpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0,
                                  timeout=1200) as client:
        async def one(i: int, messages: list[dict]) -> int:
            async with gate:
                r = await client.chat.completions.create(model=model, messages=messages, n=args.n, seed=i,
                                                         temperature=0.9, max_tokens=args.max_tokens)
                return r.usage.completion_tokens

        return sum(await asyncio.gather(*(one(i, m) for i, m in enumerate(prompts))))


def served(kit, adapters: dict, model: str, prompts, args, *, eager: bool = True) -> dict:
    from serving import local_vllm

    local_vllm.CPU_SETTINGS["enforce_eager"] = eager
    local_vllm.CPU_SETTINGS["enable_lora"] = bool(adapters)
    started = time.perf_counter()
    with local_vllm.start_local_vllm(kit.base_dir, adapters, served_model_name="base", timeout_s=1200) as server:
        up = time.perf_counter() - started
        asyncio.run(sample(server, model, prompts[:2], args))  # warm-up, not measured
        started = time.perf_counter()
        tokens = asyncio.run(sample(server, model, prompts, args))
        wall = time.perf_counter() - started
    return {"start_s": round(up, 1), "seconds": round(wall, 1), "tokens": tokens, "tok_per_s": round(tokens / wall, 1)}


def transformers_generate(kit, prompts, args) -> dict:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(kit.base_dir)
    tokenizer.padding_side = "left"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(kit.base_dir, dtype=torch.float32),
                                      str(kit.sft_adapter_dir)).eval()
    texts = [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in prompts]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    started = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**batch, do_sample=True, temperature=0.9, max_new_tokens=args.max_tokens,
                             num_return_sequences=args.n, pad_token_id=tokenizer.pad_token_id)
    wall = time.perf_counter() - started
    new = out[:, batch["input_ids"].shape[1]:]
    tokens = int((new != tokenizer.pad_token_id).sum())
    return {"seconds": round(wall, 1), "tokens": tokens, "tok_per_s": round(tokens / wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=48)
    parser.add_argument("--n", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=24)
    parser.add_argument("--eager-ceiling", action="store_true", help="the no-LoRA server with --enforce-eager")
    parser.add_argument("--skip-transformers", action="store_true")
    args = parser.parse_args()

    from training.smol import ensure_smol_kit

    kit = ensure_smol_kit()
    prompts = scenes(args.scenes)
    print(json.dumps({"machine": platform.processor() or platform.machine(), "scenes": len(prompts), "n": args.n,
                      "max_tokens": args.max_tokens, "concurrency": args.concurrency}), flush=True)
    results = {"local": served(kit, {"seinfeld": kit.sft_adapter_dir}, "seinfeld", prompts, args)}
    print(json.dumps({"server": "local", **results["local"]}), flush=True)
    results["no-lora"] = served(kit, {}, "base", prompts, args, eager=args.eager_ceiling)
    print(json.dumps({"server": "no-lora", "compiled": not args.eager_ceiling, **results["no-lora"]}), flush=True)
    if not args.skip_transformers:
        results["transformers"] = transformers_generate(kit, prompts, args)
        print(json.dumps({"server": "transformers", **results["transformers"]}), flush=True)
    ratio = results["local"]["tok_per_s"] / results["no-lora"]["tok_per_s"]
    print(json.dumps({"local_over_no_lora": round(ratio, 2), "target": 0.5}), flush=True)


if __name__ == "__main__":
    main()
