"""Step: judge the completions into chosen/rejected pairs and a quality report (stages/judge.py), resumably."""

from __future__ import annotations

import logging
from typing import Annotated

import orjson
from zenml import ArtifactConfig, log_metadata, step

from stages.judge.batch_state import batch_metadata
from stages.judge.settings import JudgeSettings
from steps.names import Artifact
from steps.records import JsonlFile, Report
from steps.scratch import scratch_dir
from steps.stage_io import fail_if_incomplete, log_summary, stage_dir, summary_metadata

logger = logging.getLogger(__name__)


@step
async def judge_preferences(
    completions: JsonlFile,
    workdir: str,
    settings: JudgeSettings,
) -> tuple[
    Annotated[JsonlFile, ArtifactConfig(name=Artifact.PREFERENCES)],
    Annotated[Report, ArtifactConfig(name=Artifact.QUALITY_REPORT)],
]:
    """Judge every completions row into `<workdir>/judge/<key>/preferences.jsonl` (+ report.json/.md).

    The folder key hashes the judge's fingerprinted settings only: every run with these settings shares
    the checkpoint, which resumes by row content, so a row judged before (an interrupted run, a smaller
    `--limit`, a regenerated completions file with this row unchanged) is never paid for again. The
    artifact is this input's view of it (engine/view.py): the pairs made from exactly these rows. The
    quality report describes the whole checkpoint (every row judged with these settings).
    The API key is read from OPENAI_API_KEY by the engine, never passed through ZenML. How it runs
    (concurrency, retries, progress) comes from the run's `Operations` (targets/spec.py), in no cache key.
    """
    from engine.view import write_view
    from stages.judge import run_judge
    from stages.judge.rows import validate_completions_row
    from targets import current_operations

    out_dir = stage_dir(workdir, "judge", settings=settings.fingerprinted())
    summary = await run_judge(completions.path, out_dir, settings, current_operations().judge_run)
    log_summary(summary)
    report = orjson.loads((out_dir / "report.json").read_bytes())
    markdown = (out_dir / "report.md").read_text()
    rows = report.get("rows", {})
    pairs = JsonlFile.of(await write_view(summary.output, completions.path, validate_completions_row,
                                          scratch_dir("view-")))
    log_metadata(metadata={
        **summary_metadata(summary),
        "judge_backend": settings.backend,
        "judge_model": settings.model_label,
        "judge_mode": settings.mode,
        **batch_metadata(out_dir),
        "pairs": pairs.rows,  # from this input's rows
        "pairs_in_checkpoint": rows.get("pairs", 0),  # the report's count: every row judged with these settings
        "report_warnings": len(report.get("warnings", [])),
        **_ledger_metadata(report.get("ledger")),
    })
    fail_if_incomplete(summary)
    return pairs, Report(data=report, markdown=markdown)


def _ledger_metadata(ledger: dict | None) -> dict:
    """The reliability ledger's figures (stages/judge/report.py `ledger`) for the dashboard; None values left out."""
    if not ledger:
        return {}
    meta = {"flip_rate": ledger["flip_rate"], "tie_rate": ledger["tie_rate"], "longer_wins": ledger["longer_wins"],
            "human_votes": ledger["human_agreement"]["votes"],
            **{f"judge_{k}": v for k, v in ledger["judge"].items() if k in ("reasoning_effort", "prompt_version",
                                                                            "prompt_sha256", "rubric_version")}}
    return {k: v for k, v in meta.items() if v is not None}
