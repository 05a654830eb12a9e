"""Step: sample n completions per prompt from the served SFT model (stages/generate.py), resumably."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Annotated

from zenml import ArtifactConfig, log_metadata, step

from infra.names import NAMES
from stages.generate import GenerateSettings
from steps.names import Artifact
from steps.records import AdapterRef, JsonlFile
from steps.scratch import scratch_dir
from steps.stage_io import fail_if_incomplete, log_summary, stage_dir, summary_metadata
from targets.spec import TargetSpec

logger = logging.getLogger(__name__)


@step
async def generate_completions(
    prompts: JsonlFile,
    settings: GenerateSettings,
    target: TargetSpec,
    sample_adapter: AdapterRef | None = None,
) -> Annotated[JsonlFile, ArtifactConfig(name=Artifact.COMPLETIONS)]:
    """Sample `settings.n` completions per prompt into `<target.workdir>/generate/<key>/completions.jsonl`, from the
    server the target points at (targets/: local, the local vLLM serving the kit's SFT adapter, started when none
    does; modal, `settings.serve_url`).

    `target.model_key` names the served model's version, so a new model gets a new checkpoint folder and cache
    entry. The folder is keyed by settings and model, not by the prompts: runs over other prompt subsets share it
    (resume by row content, nothing sampled twice), and the artifact is this input's view (engine/view.py).
    How it runs (concurrency, retries, progress) comes from the run's `Operations`, in no cache key.

    `sample_adapter` (a later round): sample from that DPO adapter instead, served as "seinfeld-dpo" beside the
    SFT adapter (what the previous round deployed, so its server is reused); the folder is keyed by the adapter's
    content hash, so one round's samples never mix with another's.
    """
    if sample_adapter is not None:
        settings = dataclasses.replace(settings, model=NAMES.dpo_model_name)
    out_dir = stage_dir(target.workdir, "generate", settings=settings.fingerprinted(), model=target.model_key,
                        **({"adapter": sample_adapter.sha256} if sample_adapter is not None else {}))
    from engine.rows import validate_prompt_row
    from engine.view import write_view
    from stages.generate import run_generate
    from targets import current_operations, open_target

    ops = current_operations()
    live, api_key = await asyncio.to_thread(open_target(target).sampling_endpoint, settings, sample_adapter, ops)
    summary = await run_generate(prompts.path, out_dir, live, ops.generate_run, api_key=api_key)
    log_summary(summary)
    log_metadata(metadata={**summary_metadata(summary), "model": settings.model, "n": settings.n,
                           "serve_url": live.serve_url,
                           **({"sampled_adapter_sha256": sample_adapter.sha256} if sample_adapter else {})})
    fail_if_incomplete(summary)
    return JsonlFile.of(await write_view(summary.output, prompts.path, validate_prompt_row, scratch_dir("view-")))
