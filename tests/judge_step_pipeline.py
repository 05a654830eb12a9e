"""A one-step pipeline for tests/test_judge_step_batch.py, run in a subprocess: import it only after init_zenml()."""

from __future__ import annotations

from pathlib import Path

from zenml import pipeline, step

from engine.options import RunOptions
from stages.judge.settings import JudgeSettings
from steps import judge_preferences
from steps.records import JsonlFile
from targets.spec import Operations


@step
def given(path: str) -> JsonlFile:
    return JsonlFile.of(Path(path))


@pipeline(enable_cache=False, extra=Operations(judge_run=RunOptions(progress=False)).to_extra())
def judge_only(completions: str, workdir: str, judge_url: str) -> None:
    settings = JudgeSettings(judge_model="gpt-5", judge_url=judge_url, mode="batch", poll_interval_s=0.05)
    judge_preferences(given(completions), workdir=workdir, settings=settings)
