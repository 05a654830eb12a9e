"""GPU check for DPO training: a few QLoRA dual-adapter steps at the plan's settings, through `train_dpo`.

Builds a Llama-architecture model with Llama-3.2-3B dimensions (random weights, so no download), saves it,
adds a random LoRA adapter (r=32), writes preference pairs long enough to fill max_length, and runs the
real training function (4-bit NF4 base, policy adapter `default`, frozen `ref` copy, batch 4, 2048 tokens).
Prints sequence tokens/s over the timed steps and the peak GPU memory.

    python bench/dpo_gpu_bench.py                 # on a CUDA GPU (L4 / H100): the plan's settings
    python bench/dpo_gpu_bench.py --tiny --cpu    # smoke check of the script itself, anywhere
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

# Llama-3.2-3B dimensions (vocab included: the logits over 128k tokens are a large part of the memory).
LLAMA_3B = {
    "hidden_size": 3072,
    "intermediate_size": 8192,
    "num_hidden_layers": 28,
    "num_attention_heads": 24,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "rope_theta": 500000.0,
    "tie_word_embeddings": True,
}
TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 1024,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": True,
}
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="a 64-wide 2-layer model instead of the 3B dimensions")
    p.add_argument("--cpu", action="store_true", help="fp32 on the CPU, no 4-bit (smoke check only)")
    p.add_argument("--steps", type=int, default=4, help="timed optimizer steps (after one warm-up step)")
    p.add_argument("--batch", type=int, default=4, help="per-device train batch (pairs)")
    p.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation per step")
    p.add_argument("--max-length", type=int, help="tokens per sequence (default 2048; 128 with --tiny)")
    p.add_argument("--rank", type=int, default=32, help="LoRA rank of the random adapter")
    p.add_argument("--work-dir", type=Path, help="where the model, adapter and data are written (temp)")
    p.add_argument("--json", type=Path, help="also write the result here")
    p.add_argument("--record", type=Path, help="put the measured seconds per micro-step into this step-time table "
                   "(training/step_times.json: what `run --estimate` forecasts training from)")
    p.add_argument("--gpu", default=None, help="the table's gpu name for --record (default: from the device, e.g. L4)")
    return p.parse_args(argv)


def record(table: Path, out: dict, gpu: str | None) -> dict:
    """Replace (or add) the table's entry for this GPU, model, quantization, batch and length with the measurement."""
    import datetime

    data = json.loads(table.read_text())
    model = "llama-3.2-3b" if out["model"] == "llama-3.2-3b-dims" else out["model"]
    name = gpu or next((g for g in ("L4", "A10G", "A100", "H100", "H200", "L40S") if g in out["device"]), out["device"])
    micro = round(out["seconds_per_step"] / out["grad_accum"], 3)
    entry = {"gpu": name, "model": model, "quantization": out["quantization"], "batch": out["batch"],
             "max_length": out["max_length"], "seconds_per_microstep": micro,
             "measured": True, "source": f"bench/dpo_gpu_bench.py on {out['device']}, {datetime.date.today()}: "
             f"{out['timed_steps']} timed steps, peak {out['peak_gpu_memory_gib']} GiB"}
    same = ("gpu", "model", "quantization", "batch", "max_length")
    data["entries"] = [e for e in data["entries"] if any(e[k] != entry[k] for k in same)] + [entry]
    table.write_text(json.dumps(data, indent=2) + "\n")
    return entry


def build_inputs(work: Path, dims: dict, rank: int, max_length: int, pairs: int, cuda: bool) -> dict[str, Path]:
    """Base model folder (random weights + tiny kit tokenizer), random LoRA adapter, and data folder."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from training.tiny import ensure_tiny_kit

    kit = ensure_tiny_kit()
    tokenizer = AutoTokenizer.from_pretrained(kit.base_dir)  # ids < 1024, valid for any vocab at least that big
    base_dir, adapter_dir, data_dir = work / "base", work / "adapter", work / "data"
    config = LlamaConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **dims,
    )
    torch.manual_seed(0)
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    with torch.device(device):  # random init on the GPU, straight in bf16: seconds, not minutes
        model = LlamaForCausalLM._from_config(config, dtype=dtype)
    model.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    lora = LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=LORA_TARGETS, bias="none", task_type="CAUSAL_LM",
        init_lora_weights=False,  # random A and B: a trained-looking adapter, not an identity
    )
    peft_model = get_peft_model(model, lora)
    peft_model.peft_config["default"].base_model_name_or_path = str(base_dir)
    peft_model.save_pretrained(adapter_dir)
    del peft_model, model
    if cuda:
        torch.cuda.empty_cache()
    write_pairs(data_dir, tokenizer, kit.sample_data, max_length, pairs)
    return {"base": base_dir, "adapter": adapter_dir, "data": data_dir}


def write_pairs(data_dir: Path, tokenizer, sample: Path, max_length: int, pairs: int) -> None:
    """Conversational pairs whose prompt+completion exceed max_length (so every sequence is full length)."""
    rows = [json.loads(line) for line in sample.read_text().splitlines() if line.strip()]
    text = " ".join(r["completion"][0]["content"] for r in rows)
    per_token = max(1, len(text) // max(1, len(tokenizer(text)["input_ids"])))
    need = per_token * max_length  # characters for about max_length tokens
    long_text = (text * (need // len(text) + 1))[:need]
    prompt_chars = need // 4  # a quarter of the sequence is prompt, the rest completion (truncated)
    data_dir.mkdir(parents=True, exist_ok=True)
    for name, count in (("train.jsonl", pairs), ("val.jsonl", 2)):
        with (data_dir / name).open("w") as f:
            for i in range(count):
                row = {
                    "prompt": [{"role": "system", "content": "You are a writer for the TV show Seinfeld."},
                               {"role": "user", "content": long_text[:prompt_chars]}],
                    "chosen": [{"role": "assistant", "content": long_text[i % 7:]}],
                    "rejected": [{"role": "assistant", "content": long_text[prompt_chars:] + long_text}],
                }
                f.write(json.dumps(row) + "\n")


def make_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.durations: list[float] = []
            self._start = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self._sync()
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self._sync()
            self.durations.append(time.perf_counter() - self._start)

        @staticmethod
        def _sync() -> None:
            import torch

            if torch.cuda.is_available():
                torch.cuda.synchronize()

    return StepTimer()


def run(args: argparse.Namespace) -> dict:
    import torch

    from training.config import DPOTrainConfig
    from training.dpo import train_dpo

    cuda = not args.cpu
    if cuda and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: run on a GPU machine, or pass --tiny --cpu for a smoke check")
    max_length = args.max_length or (128 if args.tiny else 2048)
    steps = args.steps + 1  # the first step (allocations, kernel selection) is not timed
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="dpo-bench-"))
    try:
        paths = build_inputs(
            work, TINY if args.tiny else LLAMA_3B, args.rank, max_length,
            pairs=steps * args.batch * args.grad_accum, cuda=cuda,
        )
        settings = {
            "data_dir": str(paths["data"]),
            "base_model": str(paths["base"]),
            "sft_adapter": str(paths["adapter"]),
            "output_dir": str(work / "checkpoints"),
            "adapter_out": str(work / "dpo-adapter"),
            "max_steps": steps,
            "per_device_train_batch_size": args.batch,
            "gradient_accumulation_steps": args.grad_accum,
            "max_length": max_length,
            "max_lora_rank": 512,  # a benchmark, not a served adapter
            "warmup_steps": 0,
            "logging_steps": 1,
            "eval_steps": 10_000,  # no evaluation inside the timed steps
            "save_steps": 10_000,
            "report_to": "none",
        }
        config = DPOTrainConfig.cpu_test(**settings) if args.cpu else DPOTrainConfig(**settings)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        timer = make_timer()
        result = train_dpo(config, callbacks=[timer])
        timed = timer.durations[1:] or timer.durations
        tokens_per_step = args.batch * args.grad_accum * 2 * max_length  # chosen + rejected, full length
        out = {
            "device": torch.cuda.get_device_name() if cuda else "cpu",
            "model": "tiny" if args.tiny else "llama-3.2-3b-dims",
            "quantization": "nf4" if config.load_in_4bit else "none",
            "rank": args.rank,
            "batch": args.batch,
            "grad_accum": args.grad_accum,
            "max_length": max_length,
            "timed_steps": len(timed),
            "seconds_per_step": round(sum(timed) / len(timed), 3),
            "tokens_per_second": round(tokens_per_step * len(timed) / sum(timed), 1),
            "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
            "peak_gpu_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2) if cuda else None,
            "final_loss": result.metrics.get("train_loss"),
        }
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    out = run(args)
    print(f"{out['device']}: {out['tokens_per_second']} tokens/s, {out['seconds_per_step']} s/step, "
          f"peak GPU memory {out['peak_gpu_memory_gib']} GiB")
    print(json.dumps(out))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    if args.record:
        print(f"recorded in {args.record}: {record(args.record, out, args.gpu)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
