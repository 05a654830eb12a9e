"""`publish`: a run's preference set as a Hugging Face dataset and its DPO adapter with a model card, optionally
pushed to the Hub.

This module works on plain files and records (`PublishSource`); pipelines/cli_publish.py finds them in a ZenML
run. It never imports ZenML; `datasets` and `huggingface_hub` are imported inside the functions that use them.
What it writes into the output folder:

    README.md                                 the dataset card (the Hub's YAML header: configs/data_files, ...)
    data/train-00000-of-00001.parquet         the split step's train.jsonl, as a `datasets` table
    data/validation-00000-of-00001.parquet    its val.jsonl
    adapter/                                  the adapter's files (copied; the run's folder is never touched)
    adapter/README.md                         its model card
    publish.json                              what came from where: the run, every file's sha256, the repos

`datasets.load_dataset(folder)` reads both splits back through the card's data_files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra.adapter_hash import ADAPTER_CONFIG, adapter_sha256
from infra.atomic import atomic_write, write_json
from infra.errors import ConfigError
from infra.preference_rows import check_preference_file
from pipelines import cards

logger = logging.getLogger(__name__)

SPLITS = {"train": "data/train-*.parquet", "validation": "data/validation-*.parquet"}  # split -> data_files glob
CARD = "README.md"
MANIFEST = "publish.json"
ADAPTER_DIR = "adapter"
WRITTEN = (CARD, MANIFEST, "data", ADAPTER_DIR)  # everything publish puts in the folder (what --force replaces)
# Files of an adapter folder that are not the adapter: PEFT's template card (ours replaces it) and training's record,
# which holds local paths (data, checkpoints); its settings go into the card instead.
NOT_COPIED = frozenset({CARD, "training_metrics.json"})
# The DPO settings the adapter card shows (training/config.py DPOTrainConfig): what shapes the result, no paths.
TRAINING_KEYS = ("beta", "loss_type", "learning_rate", "lr_scheduler_type", "warmup_steps", "num_train_epochs",
                 "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps", "max_length", "seed",
                 "load_in_4bit", "bf16")
METRIC_KEYS = ("steps", "epoch", "train_rows", "eval_rows", "train_loss_mean", "eval_loss", "eval_rewards/accuracies",
               "eval_rewards/margins", "train_runtime")
LORA_KEYS = {"r": "lora r", "lora_alpha": "lora alpha", "lora_dropout": "lora dropout",
             "target_modules": "lora target modules"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
TOKEN_ENV = "HF_TOKEN"


class PublishError(ConfigError):
    """Bad input for publish (exit 2 through pipelines/dpo.py): says what was expected, what came, what to do."""


@dataclass(frozen=True)
class TrainedAdapter:
    """The run's DPO adapter: where its files are, its recorded hash, and what made it."""

    path: Path
    sha256: str
    base_model: str
    steps: int
    metrics: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)  # DPOTrainConfig.to_dict() or the train step's overrides
    sft_adapter_sha256: str = "unknown"


@dataclass(frozen=True)
class PublishSource:
    """Everything publish reads from one run, as plain files and dicts."""

    run_name: str
    run_id: str
    round: int  # the run's round (1 for a plain run)
    train: Path  # the split step's train.jsonl
    val: Path  # ... and val.jsonl
    judge_report: dict[str, Any]  # the judge's report.json
    prompts_file: str
    prompts_sha256: str
    sampling: dict[str, Any]  # model, n, temperature, max_tokens (seed)
    judge: dict[str, Any]  # backend, model, reasoning effort, prompt version and hash, swap check
    judged_pairs: int | None = None  # pairs the judge made in this run (merged rounds or arena votes add more)
    row_rounds: dict[str, int] = field(default_factory=dict)  # row id -> the round that made it (merged rounds)
    adapter: TrainedAdapter | None = None
    ab_result: dict[str, Any] | None = None  # the A/B's result.json (EvalResult.to_dict())
    gate: dict[str, Any] | None = None  # the gate's decision {passed, action, serving, message}


@dataclass(frozen=True)
class Published:
    out: Path
    counts: dict[str, int]
    dataset_card_sha256: str
    adapter_dir: Path | None


# -- the output folder ---------------------------------------------------------------------------------------------


def prepare_out(out: Path, *, force: bool) -> None:
    """Make `out` ready: absent or empty, or (with `force`) holding only what publish writes, which is removed."""
    if out.exists() and not out.is_dir():
        raise PublishError(f"--out {out} is a file; give a folder (absent or empty)")
    present = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if present and not force:
        raise PublishError(f"--out {out} is not empty ({', '.join(present[:5])}{', ...' if len(present) > 5 else ''}); "
                           "give an empty folder, or --force to replace an earlier publish there")
    foreign = [name for name in present if name not in WRITTEN]
    if foreign:
        raise PublishError(f"--out {out} holds files publish did not write ({', '.join(foreign[:5])}): --force "
                           "replaces only an earlier publish (they would be uploaded with it); give another folder")
    for name in present:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    out.mkdir(parents=True, exist_ok=True)


# -- the dataset ---------------------------------------------------------------------------------------------------


def dataset_rows(path: Path, *, default_round: int, row_rounds: dict[str, int]) -> list[dict[str, Any]]:
    """The rows of a split file with the published columns; a file that is not valid preference data is refused
    (infra/preference_rows.py: the one definition of a valid row)."""
    rows, problems = [], []
    for line in check_preference_file(path):
        if line.problem is not None:
            problems.append(line.message)
            continue
        row = line.row or {}
        judge = row.get("judge") if isinstance(row.get("judge"), dict) else {}
        row_id = str(row.get("id") or line.prompt_id)
        rows.append({"prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"], "id": row_id,
                     "reason": row.get("reason") or judge.get("reason"), "round": row_rounds.get(row_id, default_round),
                     "source": row.get("source") or "judge"})
    if problems:
        raise PublishError(f"{path}: {len(problems)} invalid preference row(s), e.g. {problems[0]}; this is not the "
                           "split step's output")
    return rows


def write_dataset(source: PublishSource, out: Path) -> dict[str, int]:
    """The train and validation splits as Parquet under out/data/; returns the row count of each."""
    import datasets

    splits = {name: dataset_rows(path, default_round=source.round, row_rounds=source.row_rounds)
              for name, path in (("train", source.train), ("validation", source.val))}
    everything = splits["train"] + splits["validation"]
    if not everything:
        raise PublishError(f"run {source.run_name}'s split has no rows ({source.train}, {source.val}): nothing to "
                           "publish")
    features = datasets.Dataset.from_list(everything).features  # one schema for both splits, even an empty one
    features.update({"id": datasets.Value("string"), "reason": datasets.Value("string"),
                     "round": datasets.Value("int64"), "source": datasets.Value("string")})
    (out / "data").mkdir(parents=True, exist_ok=True)
    bars_were_on = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # a bar per split on stderr says nothing here
    try:
        for name, rows in splits.items():
            table = datasets.Dataset.from_list(rows, features=features)
            table.to_parquet(str(out / SPLITS[name].replace("*", "00000-of-00001")))
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()
    return {name: len(rows) for name, rows in splits.items()}


def publish_dataset(source: PublishSource, out: Path, *, name: str, license_id: str = "other") -> tuple[dict, str]:
    """Write the dataset (Parquet splits) and its card into `out`; returns (counts, the card's sha256)."""
    counts = write_dataset(source, out)
    counts = {"pairs": sum(counts.values()), **counts}
    if source.judged_pairs is not None and source.judged_pairs != counts["pairs"]:
        counts["judged in this run"] = source.judged_pairs
    card = cards.dataset_card(
        name=name, license_id=license_id, splits=SPLITS, counts=counts,
        source={"run_name": source.run_name, "run_id": source.run_id, "round": source.round,
                "prompts_file": shown_path(source.prompts_file), "prompts_sha256": source.prompts_sha256},
        sampling=source.sampling, judge=source.judge, report=source.judge_report)
    atomic_write(out / CARD, card.encode())
    return counts, sha256_bytes(card.encode())


# -- the adapter ---------------------------------------------------------------------------------------------------


def copy_adapter(adapter: TrainedAdapter, dest: Path, *, base_model: str | None = None) -> str:
    """Copy the adapter's files (not PEFT's template card nor training's record) into `dest`; returns the copy's
    sha256. The source is checked against the recorded hash first. `base_model`: a Hub id written into the copy's
    adapter_config.json `base_model_name_or_path`, so PEFT loads the base from the Hub (a new hash; the card says
    both)."""
    src = Path(adapter.path)
    if not (src / ADAPTER_CONFIG).is_file():
        raise PublishError(f"the run's adapter folder {src} is gone or not an adapter (no {ADAPTER_CONFIG}); "
                           "publish needs the trained adapter on this machine")
    found = adapter_sha256(src)
    if found != adapter.sha256.removeprefix("sha256:"):
        raise PublishError(f"the adapter in {src} changed since the run recorded it (sha256 {found[:12]}, recorded "
                           f"{adapter.sha256[:12]}); restore it, or publish a run whose adapter is in place")
    dest.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.iterdir()):
        if path.is_file() and path.name not in NOT_COPIED:
            shutil.copyfile(path, dest / path.name)
    if base_model and base_model != adapter.base_model:
        config = json.loads((dest / ADAPTER_CONFIG).read_text())
        config["base_model_name_or_path"] = base_model
        atomic_write(dest / ADAPTER_CONFIG, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())
    return adapter_sha256(dest)


def write_adapter_card(adapter: TrainedAdapter, dest: Path, *, name: str, dataset_ref: str, dataset_card_sha256: str,
                       judge: dict[str, Any], ab_result: dict[str, Any] | None = None,
                       gate: dict[str, Any] | None = None, base_model: str | None = None,
                       license_id: str = "other") -> str:
    """Copy the adapter into `dest` and write its model card there; returns the card's sha256."""
    published_sha = copy_adapter(adapter, dest, base_model=base_model)
    lora = json.loads((dest / ADAPTER_CONFIG).read_text())
    card = cards.adapter_card(
        name=name, license_id=license_id, base_model=base_model or shown_path(adapter.base_model),
        datasets=[dataset_ref],
        adapter={"sha256": adapter.sha256.removeprefix("sha256:"), "published_sha256": published_sha,
                 "sft_adapter_sha256": adapter.sft_adapter_sha256,
                 "base_model_recorded": shown_path(adapter.base_model), "steps": adapter.steps},
        training={k: adapter.config[k] for k in TRAINING_KEYS if k in adapter.config},
        metrics={k: adapter.metrics[k] for k in METRIC_KEYS if adapter.metrics.get(k) is not None},
        lora={label: lora[k] for k, label in LORA_KEYS.items() if k in lora},
        ab=ab_result, gate=gate, judge=judge, dataset_card_sha256=dataset_card_sha256)
    atomic_write(dest / CARD, card.encode())
    return sha256_bytes(card.encode())


# -- the whole publish ---------------------------------------------------------------------------------------------


def publish(source: PublishSource, out: Path, *, force: bool = False, repo: str | None = None,
            adapter_repo: str | None = None, base_model: str | None = None, license_id: str = "other") -> Published:
    """Write the dataset, its card, the adapter copy and its card, and publish.json into `out`. `repo` and
    `adapter_repo` (the Hub repositories they will be pushed to) name them in the cards."""
    check_base_model(source, base_model, pushing=repo is not None)
    prepare_out(out, force=force)
    name = repo or out.resolve().name
    counts, card_sha = publish_dataset(source, out, name=name, license_id=license_id)
    adapter_dir = None
    if source.adapter is not None:
        adapter_dir = out / ADAPTER_DIR
        write_adapter_card(source.adapter, adapter_dir, name=adapter_repo or f"{name}-adapter", dataset_ref=name,
                           dataset_card_sha256=card_sha, judge=source.judge, ab_result=source.ab_result,
                           gate=source.gate, base_model=base_model, license_id=license_id)
    write_json(out / MANIFEST, {
        "run": {"name": source.run_name, "id": source.run_id, "round": source.round},
        "counts": counts,
        "repos": {"dataset": repo, "adapter": adapter_repo if source.adapter is not None else None},
        "adapter_sha256_trained": source.adapter.sha256 if source.adapter is not None else None,
        "files": {str(p.relative_to(out)): sha256_file(p) for p in sorted(out.rglob("*")) if p.is_file()},
    })
    logger.info("published run %s into %s: %d pairs (%d train, %d validation)%s", source.run_name, out,
                counts["train"] + counts["validation"], counts["train"], counts["validation"],
                ", adapter with its card" if adapter_dir else ", no adapter (the run trained none)")
    return Published(out, counts, card_sha, adapter_dir)


def check_base_model(source: PublishSource, base_model: str | None, *, pushing: bool) -> None:
    """A pushed adapter card needs a Hub model id as base_model (the Hub refuses a local folder there)."""
    if source.adapter is None or not pushing:
        return
    chosen = base_model or source.adapter.base_model
    if not HUB_ID.match(chosen) or Path(chosen).exists():
        raise PublishError(f"the adapter's base model is {chosen!r}, not a Hub model id; pass --base-model "
                           "OWNER/NAME (the Hub id of that model) to push the adapter")


# -- the Hub -------------------------------------------------------------------------------------------------------


def hub_token(environ: dict[str, str]) -> str:
    token = environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise PublishError(f"--push-to-hub needs a Hugging Face token with write access in {TOKEN_ENV} "
                           "(https://huggingface.co/settings/tokens); nothing was written or pushed")
    return token


def push_to_hub(published: Published, *, repo: str, adapter_repo: str, token: str, private: bool = True) -> list[str]:
    """Create (or reuse) the dataset and model repositories and upload the folders; returns their URLs.

    Both repositories are checked before anything is uploaded: one that exists with the other visibility is
    refused (pushing private data into a public repository is the mistake this guards against)."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    targets = [(repo, "dataset", published.out, [f"{ADAPTER_DIR}/*"])]
    if published.adapter_dir is not None:
        targets.append((adapter_repo, "model", published.adapter_dir, None))
    for repo_id, kind, _, _ in targets:
        api.create_repo(repo_id, repo_type=kind, private=private, exist_ok=True)
        is_private = api.repo_info(repo_id, repo_type=kind).private
        if is_private is not None and bool(is_private) != private:
            raise PublishError(f"the {kind} repository {repo_id} exists and is {'private' if is_private else 'public'};"
                               f" this push asked for {'private' if private else 'public (--public)'}. Change its "
                               "visibility on the Hub, or push to another repository; nothing was uploaded")
    urls = []
    for repo_id, kind, folder, ignore in targets:
        api.upload_folder(repo_id=repo_id, repo_type=kind, folder_path=str(folder), ignore_patterns=ignore,
                          commit_message="publish: DPO preference set and adapter from nothing-gpt-dpo")
        url = f"https://huggingface.co/{'datasets/' if kind == 'dataset' else ''}{repo_id}"
        logger.info("pushed %s to %s (%s)", folder, url, "private" if private else "public")
        urls.append(url)
    return urls


# -- small helpers -------------------------------------------------------------------------------------------------


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def shown_path(path: str) -> str:
    """A path as a card shows it: relative to the repository when inside it, else its name (a card must not carry
    the publisher's home folder)."""
    from pipelines.zenml_home import REPO_ROOT

    p = Path(path)
    if not p.is_absolute():
        return path
    try:
        return str(p.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return p.name
