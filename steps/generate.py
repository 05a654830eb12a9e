"""Step: sample n completions per prompt from the served SFT model (engine/generate.py), resumably."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path
from typing import Annotated

from zenml import ArtifactConfig, log_metadata, step

from engine.generate import GenerateSettings
from engine.options import RunOptions
from infra.names import NAMES
from steps.names import Artifact
from steps.records import AdapterRef, JsonlFile
from steps.scratch import scratch_dir
from steps.stage_io import fail_if_incomplete, log_summary, stage_dir, summary_metadata

logger = logging.getLogger(__name__)


@step
async def generate_completions(
    prompts: JsonlFile,
    workdir: str,
    settings: GenerateSettings,
    options: RunOptions,
    serve_local_kit: bool = False,
    model_key: str = "",
    state_dir: str = "data/runs/serving",
    sample_adapter: AdapterRef | None = None,
) -> Annotated[JsonlFile, ArtifactConfig(name=Artifact.COMPLETIONS)]:
    """Sample `settings.n` completions per prompt into `<workdir>/generate/<key>/completions.jsonl`.

    `serve_local_kit` (local profile): sample from the local vLLM serving the local kit's SFT adapter,
    instead of `settings.serve_url`: the one `deploy --local` left running in `state_dir` when it
    serves that adapter, else one deployed now (it stays up; the deploy step redeploys it with the
    DPO adapter). `model_key` names the served model's version (local: training/local_kit.py; modal:
    the served SFT adapter's content hash, pipelines/pipeline.py `sft_adapter_key`), so a new model gets a new
    checkpoint folder and cache entry. The folder is keyed by settings and model, not by the
    prompts: runs over other prompt subsets share it (resume by row content, nothing sampled twice), and
    the artifact is this input's view (engine/view.py).

    `sample_adapter` (a later round, local): sample from that DPO adapter instead, served as "seinfeld-dpo"
    beside the SFT adapter (what the previous round deployed, so its server is reused); the folder is keyed by
    the adapter's content hash, so one round's samples never mix with another's.
    """
    if sample_adapter is not None:
        if not serve_local_kit:
            raise ValueError("sampling from a given adapter (rounds) needs the local profile's server")
        settings = dataclasses.replace(settings, model=NAMES.dpo_model_name)
    out_dir = stage_dir(workdir, "generate", settings=settings.fingerprinted(), model=model_key,
                        **({"adapter": sample_adapter.sha256} if sample_adapter is not None else {}))
    from engine.generate import run_generate
    from engine.rows import validate_prompt_row
    from engine.view import write_view

    live, api_key = ((await _local_endpoint(settings, Path(state_dir), model_key, sample_adapter))
                     if serve_local_kit else (settings, None))
    summary = await run_generate(prompts.path, out_dir, live, options, api_key=api_key)
    log_summary(summary)
    log_metadata(metadata={**summary_metadata(summary), "model": settings.model, "n": settings.n,
                           "serve_url": live.serve_url,
                           **({"sampled_adapter_sha256": sample_adapter.sha256} if sample_adapter else {})})
    fail_if_incomplete(summary)
    return JsonlFile.of(await write_view(summary.output, prompts.path, validate_prompt_row, scratch_dir("view-")))


async def _local_endpoint(settings: GenerateSettings, state_dir: Path, model_key: str,
                          sample_adapter: AdapterRef | None = None) -> tuple[GenerateSettings, str | None]:
    """Settings pointing at a local vLLM that serves the local kit's SFT adapter as `settings.model` (or, with
    `sample_adapter`, the SFT adapter and that one as `settings.model`), and its key."""
    from serving.deploy import deploy_local, live_local, local_api_key
    from training.local_kit import ensure_local_kit

    kit = await asyncio.to_thread(ensure_local_kit, model_key)
    adapters = {settings.model: kit.sft_adapter_dir}
    if sample_adapter is not None:
        adapters = {NAMES.sft_model_name: kit.sft_adapter_dir, settings.model: Path(sample_adapter.path)}
    record = await asyncio.to_thread(live_local, state_dir, adapters, exact=False)
    if record is None:
        record = await asyncio.to_thread(deploy_local, kit.base_dir, adapters, state_dir=state_dir)
    else:
        logger.info("sampling from the local server already running at %s", record.base_url)
    return dataclasses.replace(settings, serve_url=record.base_url), local_api_key(state_dir)
