"""`run_judge`: the judge stage's entry point, one level above its two modes, so neither imports the other's
caller: live (stages/judge/stage.py, one request per row) or the Batch API (stages/judge/batch.py, which builds
on the live stage's requests and records)."""

from __future__ import annotations

from pathlib import Path

from engine.options import RunOptions
from engine.summary import StageSummary
from stages.judge.settings import JudgeSettings


async def run_judge(
    completions: Path,
    out_dir: Path,
    settings: JudgeSettings,
    options: RunOptions,
    *,
    api_key: str | None = None,
    resume_command: str | None = None,
) -> StageSummary:
    """Judge out_dir/preferences.jsonl from a completions file (resumable); writes report.json and report.md.
    settings.mode "batch" goes through the Batch API (stages/judge/batch.py), else live."""
    if settings.mode == "batch":
        from stages.judge.batch import run_judge_batch

        return await run_judge_batch(completions, out_dir, settings, options, api_key=api_key,
                                     resume_command=resume_command)
    from stages.judge.stage import run_judge_live

    return await run_judge_live(completions, out_dir, settings, options, api_key=api_key,
                                resume_command=resume_command)
