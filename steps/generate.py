"""Step: sample n completions per prompt from the served SFT model (engine/generate.py), resumably."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator
from typing import Annotated

from zenml import ArtifactConfig, log_metadata, step

from engine.generate import GenerateSettings
from engine.options import RunOptions
from steps.names import Artifact
from steps.records import JsonlFile
from steps.stage_io import fail_if_incomplete, log_summary, stage_dir, summary_metadata

logger = logging.getLogger(__name__)


@step
async def generate_completions(
    prompts: JsonlFile,
    workdir: str,
    settings: GenerateSettings,
    options: RunOptions,
    serve_tiny_kit: bool = False,
    model_key: str = "",
) -> Annotated[JsonlFile, ArtifactConfig(name=Artifact.COMPLETIONS)]:
    """Sample `settings.n` completions per prompt into `<workdir>/generate/<key>/completions.jsonl`.

    `serve_tiny_kit` (local profile): serve the tiny kit's SFT adapter on a free local port for the
    duration of the step instead of calling `settings.serve_url`. `model_key` names the served model's
    version (the tiny kit's key), so a new model gets a new checkpoint folder and cache entry.
    """
    out_dir = stage_dir(workdir, "generate", settings=settings.fingerprinted(), input=prompts.sha256,
                        model=model_key)
    from engine.generate import run_generate

    async with _endpoint(settings, serve_tiny_kit) as live:
        summary = await run_generate(prompts.path, out_dir, live, options)
    log_summary(summary)
    log_metadata(metadata={**summary_metadata(summary), "model": settings.model, "n": settings.n,
                           "serve_url": live.serve_url})
    fail_if_incomplete(summary)
    return JsonlFile.of(summary.output)


@contextlib.asynccontextmanager
async def _endpoint(settings: GenerateSettings, serve_tiny_kit: bool) -> AsyncIterator[GenerateSettings]:
    """The settings to call: as given, or pointing at a local server of the tiny kit started for this step."""
    if not serve_tiny_kit:
        yield settings
        return
    from serving.local_process import start_local_server
    from training.tiny import ensure_tiny_kit

    kit = await asyncio.to_thread(ensure_tiny_kit)
    handle = await asyncio.to_thread(start_local_server, kit.base_dir, {settings.model: kit.sft_adapter_dir})
    try:
        yield dataclasses.replace(settings, serve_url=handle.base_url)
    finally:
        await asyncio.to_thread(handle.stop)
