"""What the engine steps share: a stable working folder per settings, metadata, the failure rule.

A stage's checkpoint folder is `<workdir>/<stage>/<key>`, where the key hashes the settings that change
the stage's results (the engine's fingerprinted settings, the model), not the input: the checkpoint
resumes by row content, so runs over different inputs (a smaller `--limit`, a regenerated file) share the
rows they have in common and nothing is paid twice; each step hands on its input's view (engine/view.py).
- rerunning with the same settings finds the same folder and resumes;
- changing settings gets a new folder, never a refused or stale resume;
- going back to earlier settings finds their folder again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

KEY_CHARS = 16


class StageIncomplete(RuntimeError):
    """Some rows failed or were not reached; the finished ones are kept, a rerun retries the rest."""


def stage_key(**parts: Any) -> str:
    canonical = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:KEY_CHARS]


def stage_dir(workdir: str | Path, stage: str, **parts: Any) -> Path:
    """`<workdir>/<stage>/<key of parts>`, created if missing."""
    path = Path(workdir) / stage / stage_key(**parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def summary_metadata(summary: Any) -> dict[str, Any]:
    """What a dashboard reader wants from a StageSummary: counts, failures, retries, tokens, dollars, time."""
    c = summary.counters
    meta: dict[str, Any] = {
        "rows_total": c.total + c.done_before,
        "rows_done_before": c.done_before,  # resumed from the checkpoint: not paid again
        "rows_succeeded": c.succeeded,
        "rows_skipped": c.skipped,
        "rows_failed": c.failed,
        "rows_rejected": c.rejected,
        "rows_duplicate": c.duplicates,
        "rows_unfinished": summary.unfinished,
        "requests": c.requests,
        "retries": c.retries,
        "tokens_in": c.tokens_in,
        "tokens_cached": c.tokens_cached,
        "tokens_out": c.tokens_out,
        "cost_usd": round(c.cost_usd, 6),
        "elapsed_s": round(summary.elapsed_s, 3),
        "interrupted": summary.interrupted,
        "checkpoint": str(summary.output),
    }
    if summary.stopped_reason:
        meta["stopped_reason"] = summary.stopped_reason
    for key, value in c.extra.items():
        meta[f"extra_{key}"] = value
    return meta


def fail_if_incomplete(summary: Any) -> None:
    """Fail the step (after its metadata is logged) when rows failed or were left: a rerun retries them."""
    if not (summary.failed or summary.unfinished or summary.interrupted):
        return
    kept = summary.succeeded + summary.skipped + summary.counters.done_before
    if summary.interrupted:
        what = f"interrupted ({summary.stopped_reason or 'signal'}); {summary.unfinished} row(s) not reached"
    else:
        errors = Path(summary.output).with_suffix(".errors.jsonl")
        what = f"{summary.failed} row(s) failed (see {errors}) and {summary.unfinished} were not reached"
    raise StageIncomplete(
        f"{summary.stage}: {what}; the {kept} finished row(s) are kept in {Path(summary.output).parent}: "
        "rerun the same command to do only the rest"
    )


def log_summary(summary: Any) -> None:
    for line in summary.render().splitlines():
        logger.info("%s", line)
