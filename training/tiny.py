"""A tiny Llama-architecture model kit for CPU tests and local runs: no hub, no network.

`ensure_tiny_kit()` returns a folder holding
- `base/`: a randomly initialised `LlamaForCausalLM` (hidden 128, 2 heads of 64, 2 layers: a shape vLLM's CPU
  attention accepts) saved with `save_pretrained`, and a byte-level BPE tokenizer trained on
  `data/sample/prompts.jsonl` with a Llama-3-style chat template, eos (`<|eot_id|>`) and pad tokens.
  `AutoModelForCausalLM`, `AutoTokenizer`, PEFT and vLLM load it like any model.
- `sft-adapter/`: a LoRA adapter (r=8, q/k/v/o, bias none) from a short real TRL `SFTTrainer` run on the
  sample data: the stand-in for the Seinfeld SFT adapter (served as "seinfeld").
- `dpo-adapter/`: two CPU steps of `train_dpo` (4-bit NF4 base, as on the L4) from that adapter on pairs made
  from the sample data (the gold completion chosen, another scene's completion rejected): the stand-in for
  "seinfeld-dpo".

The kit is built once into a cache folder keyed by a hash of the recipe, the sample data and the library
versions, so a changed recipe builds a new kit. A build writes into a temporary folder and renames it into
place at the end: an interrupted build never leaves a folder that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DATA = REPO_ROOT / "data" / "sample" / "prompts.jsonl"
DEFAULT_CACHE = REPO_ROOT / ".cache" / "tiny-kit"
CACHE_ENV = "NGPT_TINY_KIT_DIR"
MANIFEST = "kit.json"

# Llama-3-like special tokens; the chat template below renders them the way Llama 3 Instruct does.
BOS, EOS, PAD = "<|begin_of_text|>", "<|eot_id|>", "<|finetune_right_pad_id|>"
END_OF_TEXT, START_HEADER, END_HEADER = "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>"
SPECIAL_TOKENS = [BOS, END_OF_TEXT, START_HEADER, END_HEADER, EOS, PAD]
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Everything that shapes the kit. Change anything here and the cache key changes with it.
RECIPE: dict = {
    "version": 3,
    "seed": 0,
    "vocab_size": 1024,
    "model": {  # head_dim 64 (128 / 2 heads): the smallest head vLLM's CPU attention kernels accept
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": True,  # as Llama 3.2 3B
    },
    "lora": {
        "r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
    },
    "sft": {
        "max_steps": 4,
        "batch_size": 4,
        "learning_rate": 2e-3,  # large: a few steps must move the tiny adapter visibly away from zero
        "max_length": 1024,
    },
    "dpo": {"max_steps": 2, "max_length": 512},
}
_KEY_PACKAGES = ("torch", "transformers", "peft", "trl", "tokenizers")
_KEY_SOURCES = ("dpo.py", "config.py", "data.py", "adapters.py", "resume.py")


@dataclass(frozen=True)
class TinyKit:
    """Paths of a built tiny kit."""

    base_dir: Path  # base model + tokenizer (a local model folder)
    sft_adapter_dir: Path  # LoRA adapter made by a short SFT run, for `base_dir`
    dpo_adapter_dir: Path  # the SFT adapter after two DPO steps (same config, same base)
    root: Path  # the kit folder holding both
    key: str  # hash of recipe + sample data + library versions

    @property
    def sample_data(self) -> Path:
        """The SFT rows the kit was trained on (handy for building small test sets)."""
        return SAMPLE_DATA


def kit_key(sample_data: Path = SAMPLE_DATA) -> str:
    """The cache key: a hash of the recipe, the sample data and the versions of the libraries that write it."""
    h = hashlib.sha256()
    h.update(json.dumps(RECIPE, sort_keys=True).encode())
    h.update(CHAT_TEMPLATE.encode())
    h.update(sample_data.read_bytes())
    for source in _KEY_SOURCES:  # the DPO adapter is made by this code
        h.update((Path(__file__).parent / source).read_bytes())
    for name in _KEY_PACKAGES:
        h.update(f"{name}=={_version(name)}".encode())
    return h.hexdigest()[:16]


@contextmanager
def build_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (flock): one process builds a kit while the others wait for it, rather than
    every process that starts at once building its own copy (two test workers, a test and a run)."""
    import fcntl

    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_kit_once(root: Path, build: Callable[[Path], None], message: str) -> None:
    """Make the kit folder `root` unless a complete one (its manifest, written last) is there: under the build
    lock, `build(tmp)` fills a temporary folder beside it, renamed into place at the end, so an interrupted build
    never looks complete and processes that start at once build it once. Both kits (tiny, SmolLM2) use it."""
    if (root / MANIFEST).is_file():
        return
    cache = root.parent
    cache.mkdir(parents=True, exist_ok=True)
    with build_lock(cache / f".{root.name}.lock"):
        if (root / MANIFEST).is_file():  # another process built it while this one waited
            return
        tmp = Path(tempfile.mkdtemp(prefix=f".building-{root.name}-", dir=cache))
        try:
            logger.info(message, root)
            build(tmp)
            try:
                tmp.rename(root)
            except OSError:
                if not (root / MANIFEST).is_file():  # not a finished concurrent build: a real failure
                    raise
                logger.info("another process finished the same kit first; using it")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def ensure_tiny_kit(cache_dir: Path | None = None) -> TinyKit:
    """Return the tiny kit, building it first if this recipe has no complete kit in `cache_dir` yet.

    `cache_dir` defaults to `$NGPT_TINY_KIT_DIR`, else `<repo>/.cache/tiny-kit`.
    """
    cache = Path(cache_dir or os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser().resolve()
    key = kit_key()
    root = cache / key
    build_kit_once(root, lambda tmp: _build(tmp, final_root=root), "building the tiny model kit in %s")
    return TinyKit(
        base_dir=root / "base",
        sft_adapter_dir=root / "sft-adapter",
        dpo_adapter_dir=root / "dpo-adapter",
        root=root,
        key=key,
    )


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


@contextmanager
def _offline() -> Iterator[None]:
    """Make any accidental hub call fail instead of reaching the network."""
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
    saved = {n: os.environ.get(n) for n in names}
    os.environ.update({n: "1" for n in names})
    try:
        yield
    finally:
        for n, v in saved.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v


def _sample_rows() -> list[dict]:
    with SAMPLE_DATA.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _build(tmp: Path, final_root: Path) -> None:
    with _offline():
        rows = _sample_rows()
        tokenizer = _build_tokenizer(rows)
        base = tmp / "base"
        model = _build_base(tokenizer)
        model.save_pretrained(base)
        tokenizer.save_pretrained(base)
        train_sft_adapter(model, tokenizer, rows, out=tmp / "sft-adapter", work=tmp / "sft-run",
                          final_base=final_root / "base")
        shutil.rmtree(tmp / "sft-run", ignore_errors=True)
        _train_dpo_adapter(tmp, final_root)
    manifest = {
        "key": final_root.name,
        "recipe": RECIPE,
        "base": "base",
        "sft_adapter": "sft-adapter",
        "dpo_adapter": "dpo-adapter",
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")  # written last: marks a complete kit


def sample_preference_rows(rows: list[dict] | None = None) -> list[dict]:
    """Preference pairs from SFT rows: the row's own completion chosen, the next row's rejected."""
    rows = rows if rows is not None else _sample_rows()
    return [
        {
            "id": f"sample-{i}",
            "prompt": row["prompt"],
            "chosen": row["completion"],
            "rejected": rows[(i + 1) % len(rows)]["completion"],
        }
        for i, row in enumerate(rows)
    ]


def write_sample_preferences(data_dir: Path, n_val: int = 5) -> Path:
    """Write train.jsonl / val.jsonl made by `sample_preference_rows` into `data_dir`; return it."""
    rows = sample_preference_rows()
    data_dir.mkdir(parents=True, exist_ok=True)
    for name, part in (("train.jsonl", rows[:-n_val]), ("val.jsonl", rows[-n_val:])):
        (data_dir / name).write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
    return data_dir


def _corpus(rows: list[dict]) -> Iterator[str]:
    for row in rows:
        for message in row["prompt"] + row["completion"]:
            yield message["content"]
            yield message["role"]


def _build_tokenizer(rows: list[dict]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=RECIPE["vocab_size"],
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # any byte encodes: no unknown tokens
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(rows), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[END_OF_TEXT, START_HEADER, END_HEADER],
        model_max_length=RECIPE["model"]["max_position_embeddings"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _build_base(tokenizer):
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(RECIPE["seed"])
    eos_ids = [tokenizer.convert_tokens_to_ids(EOS), tokenizer.convert_tokens_to_ids(END_OF_TEXT)]
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos_ids,
        pad_token_id=tokenizer.pad_token_id,
        **RECIPE["model"],
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=eos_ids, pad_token_id=tokenizer.pad_token_id
    )
    return model


def train_sft_adapter(model, tokenizer, rows: list[dict], *, out: Path, work: Path, final_base: Path,
                      recipe: dict = RECIPE, save_tokenizer: bool = False) -> None:
    """A short real TRL SFT run of a LoRA adapter (`recipe`'s lora and sft entries) on `rows`, saved in `out`
    and pointed at `final_base` (the build folder is renamed into place at the end). Used by both kits;
    `save_tokenizer` puts the tokenizer (and its chat template) beside the adapter."""
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    sft = recipe["sft"]
    set_seed(recipe["seed"])  # LoRA's A matrices are drawn here, before the trainer seeds: a kit rebuilds bit for bit
    peft_model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **recipe["lora"]))
    args = SFTConfig(
        output_dir=str(work),
        max_steps=sft["max_steps"],
        per_device_train_batch_size=sft["batch_size"],
        learning_rate=sft["learning_rate"],
        max_length=sft["max_length"],
        lr_scheduler_type="constant",
        bf16=False,  # CPU: fp32 (TRL defaults to bf16)
        use_cpu=True,
        gradient_checkpointing=False,  # TRL defaults to True; pointless at this size
        save_strategy="no",
        logging_steps=1,
        report_to="none",
        seed=recipe["seed"],
        disable_tqdm=True,
    )
    dataset = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
    trainer = SFTTrainer(model=peft_model, args=args, train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    peft_model.save_pretrained(out)
    if save_tokenizer:
        tokenizer.save_pretrained(out)
    config_path = out / "adapter_config.json"
    adapter_config = json.loads(config_path.read_text())
    adapter_config["base_model_name_or_path"] = str(final_base)
    config_path.write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")


def _train_dpo_adapter(tmp: Path, final_root: Path) -> None:
    """Two DPO steps from the SFT adapter; the adapter is then re-pointed at the kit's final base path."""
    from training.config import DPOTrainConfig
    from training.dpo import train_dpo

    adapter = tmp / "dpo-adapter"
    config = DPOTrainConfig.cpu_test(
        data_dir=str(write_sample_preferences(tmp / "dpo-data")),
        base_model=str(tmp / "base"),
        sft_adapter=str(tmp / "sft-adapter"),
        output_dir=str(tmp / "dpo-run"),
        adapter_out=str(tmp / "dpo-adapters"),  # saved under its content hash, then moved to the kit's name
        check_base_model=False,  # the SFT adapter already names the final base path
        save_steps=1000,  # no checkpoint: nothing to resume in a kit build
        eval_steps=1000,
        seed=RECIPE["seed"],
        **RECIPE["dpo"],
    )
    train_dpo(config).adapter_dir.rename(adapter)
    for leftover in ("dpo-run", "dpo-data", "dpo-adapters"):
        shutil.rmtree(tmp / leftover, ignore_errors=True)
    (adapter / "training_metrics.json").unlink(missing_ok=True)
    config_path = adapter / "adapter_config.json"
    adapter_config = json.loads(config_path.read_text())
    adapter_config["base_model_name_or_path"] = str(final_root / "base")
    config_path.write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")
