"""`judge --mode batch`: the live judge's requests sent through OpenAI's Batch API, at half the price.

    rows -> request lines (custom_id = row id) -> chunk files (<= 50,000 lines, < 200 MB) -> upload -> batch
         <- results / skipped / errors <- JudgeStage reads each answer as live mode does <- output files <- poll

Every request body, answer check, price and record comes from `JudgeStage` (stages/judge/stage.py), so a
batch answer becomes exactly the row live mode would write. The modules:

- batch.py (this one): the entry point; starting or resuming a folder as the runner starts a stage.
- batch_live.py: --finish-live, the live stage reusing a --swap-check order the batches answered.
- batch_run.py: the rounds: write, upload and create chunk batches within --max-cost, poll them, retry.
- batch_chunks.py: a round's request lines packed into input files within the API's per-file limits.
- batch_collect.py: a finished batch's output and error files turned into results, skips, errors or retries.
- batch_state.py: what is recorded in NAME.batches.json, so a rerun resumes polling and never submits twice.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import openai

from engine.client import check_endpoint, make_client
from engine.options import RunOptions
from engine.output import open_output
from engine.rows import check_input_file
from engine.summary import StageSummary
from stages.judge.batch_live import finish_live
from stages.judge.batch_run import BatchRun
from stages.judge.batch_state import BatchState, state_path
from stages.judge.report import write_report
from stages.judge.settings import JudgeSettings
from stages.judge.stage import JudgeStage, judge_api_key, max_cost_prior

log = logging.getLogger(__name__)


async def run_judge_batch(
    completions: Path,
    out_dir: Path,
    settings: JudgeSettings,
    options: RunOptions,
    *,
    api_key: str | None = None,
    resume_command: str | None = None,
) -> StageSummary:
    """Judge out_dir/preferences.jsonl through the Batch API (resumable); then report.json and report.md, and with
    settings.finish_live the rows left judged live in the same folder."""
    check_input_file(completions, "--completions")
    key = judge_api_key(settings, api_key)
    client = make_client(settings.judge_url, key, timeout_s=settings.timeout_s, concurrency=4)
    try:
        await check_endpoint(client, url_setting="--judge-url / OPENAI_BASE_URL", key_setting="OPENAI_API_KEY")
        prior = await max_cost_prior(completions, settings)
        stage = JudgeStage(settings, client, prior_row_cost=prior, secret=key)
        summary = await _start(stage, client, completions, out_dir, options, resume_command)
    finally:
        await client.close()
    write_report(out_dir)
    if settings.finish_live and (summary.failed or summary.unfinished) and not summary.interrupted:
        summary = await finish_live(summary, completions, out_dir, settings, options, key, resume_command)
    return summary


async def _start(
    stage: JudgeStage,
    client: openai.AsyncOpenAI,
    path: Path,
    out_dir: Path,
    options: RunOptions,
    resume_command: str | None,
) -> StageSummary:
    """As every stage starts and ends (engine/output.py: open_output; the fingerprint is the same as live
    mode's, so either mode resumes the other's results), with the batch state loaded once the folder is open."""
    async with open_output(stage, path, out_dir, options,
                           on_fresh=lambda ck: _move_batches_aside(out_dir, ck.name)) as run:
        state = BatchState.load(state_path(out_dir, run.checkpoint.name))
        summary = await BatchRun(
            stage, client, path, out_dir, run.checkpoint.name, options, run.counters, run.writer, set(run.done), state
        ).run()
        return run.finish(summary, resume_command)


def _move_batches_aside(out_dir: Path, name: str) -> None:
    """--fresh: the batch records and files go to previous/ too (batches still running at OpenAI are abandoned)."""
    files = [state_path(out_dir, name), *out_dir.glob(f"{name}.batch-*.jsonl")]
    files = [f for f in files if f.exists()]
    if not files:
        return
    target = out_dir / "previous" / f"{name}-batches-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
    target.mkdir(parents=True, exist_ok=True)
    for f in files:
        f.rename(target / f.name)
    log.warning("--fresh: moved the previous batch records to %s (batches still running are not cancelled)", target)
