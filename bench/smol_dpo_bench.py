"""The local profile's DPO cost on the CPU: seconds per step on the SmolLM2 kit, fp32 vs the 4-bit NF4 path.

Runs `train_dpo` (the code the pipeline runs) from the kit's SFT adapter on pairs made from the project's scenes
(each scene's own lines chosen, another scene's rejected: the length of the local run's pairs), once with the
base in fp32 and once quantized to 4-bit NF4 with bf16 compute (as on the L4), and prints seconds per optimizer
step and per pair for each. Why the local profile trains in fp32: README, "Local profile".

    python bench/smol_dpo_bench.py [--steps 3] [--batch 4]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

SCENES = Path(__file__).resolve().parent.parent / "data" / "local" / "scenes.jsonl"


def pairs(n: int) -> list[dict]:
    rows = [json.loads(line) for line in SCENES.read_text().splitlines() if line.strip()][: n + 1]
    return [{"prompt": r["prompt"], "chosen": r["completion"], "rejected": rows[i + 1]["completion"]}
            for i, r in enumerate(rows[:n])]


def run(kit, data: Path, out: Path, *, fp32: bool, steps: int, batch: int) -> dict:
    from training.config import DPOTrainConfig
    from training.dpo import train_dpo

    config = DPOTrainConfig.cpu_test(
        fp32=fp32, data_dir=str(data), base_model=str(kit.base_dir), sft_adapter=str(kit.sft_adapter_dir),
        output_dir=str(out / "checkpoints"), adapter_out=str(out / "adapter"), max_steps=steps,
        per_device_train_batch_size=batch, max_length=320, eval_steps=1000, save_steps=1000, learning_rate=5e-4,
    )
    started = time.perf_counter()
    result = train_dpo(config)
    seconds = time.perf_counter() - started
    runtime = float(result.metrics.get("train_runtime") or seconds)
    return {"path": "fp32" if fp32 else "4-bit NF4 (bf16 compute)", "steps": result.steps,
            "train_runtime_s": round(runtime, 1), "s_per_step": round(runtime / steps, 1),
            "s_per_pair": round(runtime / (steps * batch), 2), "wall_s_with_loading": round(seconds, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=4)
    args = p.parse_args(argv)
    from training.smol import ensure_smol_kit

    kit = ensure_smol_kit()
    with tempfile.TemporaryDirectory(prefix="smol-dpo-bench-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        rows = pairs(args.steps * args.batch + 4)
        (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:-4]))
        (data / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[-4:]))
        for fp32 in (True, False):
            print(json.dumps(run(kit, data, Path(tmp) / ("fp32" if fp32 else "nf4"), fp32=fp32, steps=args.steps,
                                 batch=args.batch)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
