"""Split preference pairs into train and validation by a hash of the prompt, not by line or chance.

A row goes to validation when sha256("split-v1:" + prompt id) falls below `val_fraction`. The prompt id
is recomputed from the prompt itself, so the assignment is stable when rows are added or removed, and
two pairs for one prompt always land on the same side (no leakage). Rows are copied byte for byte.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import orjson

from engine.checkpoint import atomic_write
from engine.errors import ConfigError
from engine.rows import prompt_id
from infra.preference_rows import check_preference_file

log = logging.getLogger(__name__)

SALT = b"split-v1:"
# The A/B hold-out (configs/local.yaml `holdout_fraction`): prompts never sampled nor trained on. Its own salt, so
# the train/val split of the sampled prompts is independent of it.
HOLDOUT_SALT = b"holdout-v1:"
MAX_PROBLEMS_SHOWN = 20


@dataclass(frozen=True)
class SplitResult:
    train_path: Path
    val_path: Path
    n_train: int
    n_val: int
    val_fraction: float = 0.1
    manifest_path: Path | None = None

    def render(self) -> str:
        total = self.n_train + self.n_val
        share = self.n_val / total if total else 0.0
        return (
            f"split: {self.n_train} train, {self.n_val} val ({100 * share:.1f}% val; asked {self.val_fraction:g})\n"
            f"  {self.train_path}\n  {self.val_path}"
        )


def split_value(pid: str, salt: bytes = SALT) -> float:
    """A number in [0, 1) that depends only on the prompt id (and the salt)."""
    digest = hashlib.sha256(salt + pid.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_preferences(preferences: Path, out_dir: Path, val_fraction: float = 0.1) -> SplitResult:
    """Write out_dir/train.jsonl, out_dir/val.jsonl and out_dir/split.json from a preferences file."""
    if not 0 < val_fraction < 1:
        raise ConfigError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}; e.g. 0.1")
    if not preferences.exists():
        raise ConfigError(f"preferences file {preferences} does not exist; run the judge first")
    rows: list[tuple[float, bytes]] = []
    problems: list[str] = []
    for line in check_preference_file(preferences):  # the same rules training applies (one check, one place)
        if line.problem is not None:
            problems.append(line.message)
            continue
        rows.append((split_value(line.prompt_id), line.raw))
    if problems:
        shown = "\n  ".join(problems[:MAX_PROBLEMS_SHOWN])
        more = f"\n  ... and {len(problems) - MAX_PROBLEMS_SHOWN} more" if len(problems) > MAX_PROBLEMS_SHOWN else ""
        raise ConfigError(f"{len(problems)} invalid preference row(s):\n  {shown}{more}\nFix or remove them.")
    if not rows:
        raise ConfigError(f"{preferences} has no preference rows; did the judge keep any pairs? see its report.md")
    is_val = [v < val_fraction for v, _ in rows]
    _keep_both_sides(rows, is_val)
    train = b"".join(raw + b"\n" for (_, raw), val in zip(rows, is_val, strict=True) if not val)
    val = b"".join(raw + b"\n" for (_, raw), val in zip(rows, is_val, strict=True) if val)
    out_dir.mkdir(parents=True, exist_ok=True)
    train_path, val_path, manifest = out_dir / "train.jsonl", out_dir / "val.jsonl", out_dir / "split.json"
    atomic_write(train_path, train)
    atomic_write(val_path, val)
    n_val = sum(is_val)
    result = SplitResult(train_path, val_path, len(rows) - n_val, n_val, val_fraction, manifest)
    atomic_write(manifest, orjson.dumps({
        "source": str(preferences),
        "source_sha256": hashlib.sha256(preferences.read_bytes()).hexdigest(),
        "method": "val when sha256('split-v1:' + prompt id) / 2^64 < val_fraction",
        "val_fraction": val_fraction,
        "n_train": result.n_train,
        "n_val": result.n_val,
        "train_sha256": hashlib.sha256(train).hexdigest(),
        "val_sha256": hashlib.sha256(val).hexdigest(),
    }, option=orjson.OPT_INDENT_2))
    log.debug("split %s: %d train, %d val", preferences, result.n_train, result.n_val)
    return result


def _keep_both_sides(rows: list[tuple[float, bytes]], is_val: list[bool]) -> None:
    """Tiny inputs only: if the hash put every row on one side, move the prompt nearest the threshold over,
    so training has data and evaluation has data (still deterministic; prompts move as a group)."""
    if all(is_val) == any(is_val) and len({v for v, _ in rows}) >= 2:
        flip_to_val = not any(is_val)
        pick = min(v for v, _ in rows) if flip_to_val else max(v for v, _ in rows)
        for i, (v, _) in enumerate(rows):
            if v == pick:
                is_val[i] = flip_to_val
        log.warning("split: the hash put every row in %s; moved one prompt to %s",
                    "train" if flip_to_val else "val", "val" if flip_to_val else "train")


def write_subset(source: Path, out: Path, *, limit: int | None, holdout_fraction: float, side: str,
                 offset: int = 0) -> tuple[int, int]:
    """Write `side`'s rows of `source` (at most `limit`, after skipping `offset` of them) into `out`, byte for
    byte; returns (written, other side seen before the limit stopped the copy)."""
    kept = held = skipped = 0
    with open(source, "rb") as src, open(out, "wb") as dst:
        for line in src:
            if not line.strip():
                continue
            if holdout_fraction and (held_out_line(line, holdout_fraction) != (side == "holdout")):
                held += 1
                continue
            if skipped < offset:
                skipped += 1
                continue
            if limit is not None and kept >= limit:
                break
            dst.write(line if line.endswith(b"\n") else line + b"\n")
            kept += 1
    return kept, held


def held_out_line(line: bytes, fraction: float) -> bool:
    """Whether a prompt row is in the hold-out; a row that is not a JSON object with a prompt stays on the sample
    side, where the stage that reads it names the file, the line and the problem (nothing dropped here)."""
    try:
        row = orjson.loads(line)
        prompt = row["prompt"]
        return split_value(prompt_id(prompt), HOLDOUT_SALT) < fraction
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return False
