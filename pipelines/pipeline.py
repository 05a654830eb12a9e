"""The ZenML pipeline: prompts -> completions -> preferences -> train/val -> uploaded data -> adapter -> deployment
-> A/B evaluation.

Import this module only after `pipelines.zenml_home.init_zenml()` (it imports ZenML); the CLI does so.
Every step gets only parameters that define its output (settings, content hashes, the model's key), so
ZenML's cache is right to skip a step whose parameters and inputs are unchanged; secrets never appear.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from zenml import pipeline

from engine.evaluation.stage import EvaluateSettings
from engine.generate import GenerateSettings
from engine.judge.settings import JudgeSettings
from engine.options import RunOptions
from engine.rows import file_sha256
from pipelines.config import PipelineConfig
from steps import (
    add_arena_pairs,
    deploy_adapters,
    evaluate_adapters,
    evaluate_vs_previous,
    generate_completions,
    judge_preferences,
    merge_preferences,
    select_prompts,
    split_dataset,
    train_adapter,
    upload_dataset,
)
from steps.names import PIPELINE_NAME


@pipeline(name=PIPELINE_NAME)
def dpo_pipeline(
    profile: str,
    prompts_file: str,
    prompts_sha256: str,
    limit: int | None,
    workdir: str,
    generate: GenerateSettings,
    generate_run: RunOptions,
    judge: JudgeSettings,
    judge_run: RunOptions,
    val_fraction: float,
    train: dict[str, Any],
    deploy_state_dir: str,
    deploy_timeout_s: float,
    deploy_port: int,
    model_key: str,
    evaluate: EvaluateSettings,
    evaluate_judge: JudgeSettings,
    evaluate_prompts: str | None,
    holdout_fraction: float = 0.0,
    upload_token: str = "",
    deploy_token: str = "",
    prompt_offset: int = 0,
    previous_adapter_id: str | None = None,
    earlier_preferences_ids: tuple[str, ...] = (),
    arena_votes: str | None = None,
    arena_votes_sha256: str = "",
) -> None:
    """Sample, judge, split, upload, train, redeploy and A/B-evaluate; `profile` picks local (a local kit, named
    by `model_key`) or modal. With `holdout_fraction` > 0 that share of the prompt file (by a hash of the prompt)
    is never sampled nor trained on, and the A/B evaluates on it instead of the split's val set.

    A later round (pipelines/rounds.py) names the previous round's `dpo_adapter` version: it is sampled from,
    trained on from (the SFT adapter stays the reference), served beside as seinfeld-dpo-prev and A/B'd against;
    `prompt_offset` picks the round's slice of prompts, `earlier_preferences_ids` the pairs it trains on too."""
    local = profile == "local"
    previous = _artifact(previous_adapter_id)  # an input artifact: lineage from the previous round's adapter
    prompts = select_prompts(prompts_file=prompts_file, prompts_sha256=prompts_sha256, limit=limit,
                             holdout_fraction=holdout_fraction, side="sample", offset=prompt_offset)
    completions = generate_completions(prompts, workdir=workdir, settings=generate, options=generate_run,
                                       serve_local_kit=local, model_key=model_key, state_dir=deploy_state_dir,
                                       sample_adapter=previous)
    preferences, _report = judge_preferences(completions, workdir=workdir, settings=judge, options=judge_run)
    for number, earlier in enumerate(earlier_preferences_ids, start=1):
        preferences = merge_preferences(preferences, _artifact(earlier), id=f"merge_preferences_{number}")
    if arena_votes:  # the arena's decided votes join this round's pairs (never on the A/B's prompts)
        preferences = add_arena_pairs(preferences, votes_file=arena_votes, votes_sha256=arena_votes_sha256,
                                      prompts_file=prompts_file, holdout_fraction=holdout_fraction,
                                      evaluate_prompts=evaluate_prompts)
    train_set, val_set = split_dataset(preferences, val_fraction=val_fraction)
    data_path = upload_dataset(train_set, val_set, target=profile, workdir=workdir, place_token=upload_token)
    adapter = train_adapter(data_path, target=profile, workdir=workdir, overrides=train, model_key=model_key,
                            init_adapter=previous)
    deploy_adapters(adapter, target=profile, state_dir=deploy_state_dir, timeout_s=deploy_timeout_s,
                    port=deploy_port, place_token=deploy_token, model_key=model_key, previous_adapter=previous)
    if holdout_fraction > 0:  # the prompts nothing sampled: the A/B's prompts (unless evaluate_prompts names a file)
        val_set = select_prompts(prompts_file=prompts_file, prompts_sha256=prompts_sha256,
                                 holdout_fraction=holdout_fraction, side="holdout", id="select_holdout_prompts")
    evaluate_adapters(adapter, val_set, workdir=workdir, generate=generate, judge=evaluate_judge,
                      options=generate_run, judge_options=judge_run, settings=evaluate, target=profile,
                      state_dir=deploy_state_dir,
                      prompts_file=evaluate_prompts, model_key=model_key, after="deploy_adapters")
    if previous is not None:
        evaluate_vs_previous(adapter, previous, val_set, workdir=workdir, generate=generate, judge=evaluate_judge,
                             options=generate_run, judge_options=judge_run, settings=evaluate,
                             state_dir=deploy_state_dir,
                             prompts_file=evaluate_prompts, after="evaluate_adapters")


def _artifact(version_id: str | None) -> Any:
    """The artifact version with this id (a step input that records lineage), or None."""
    if not version_id:
        return None
    from zenml.client import Client

    return Client().get_artifact_version(version_id)


def pipeline_parameters(cfg: PipelineConfig) -> dict[str, Any]:
    """The pipeline's parameters for `cfg`; the prompt file's hash and the place tokens (is the uploaded data
    still there, is the deployment still live: steps/place_tokens.py) are taken now, at launch."""
    from steps.place_tokens import deploy_token, upload_token

    if cfg.is_local:
        from training.local_kit import local_model_key

        model_key = local_model_key(cfg.local_model)  # a rebuilt kit is a new model: new samples, new adapter
    else:
        from infra.names import NAMES

        model_key = sft_adapter_key(NAMES.sft_adapter)  # a new SFT adapter uploaded: new samples, new adapter
    return {
        "profile": cfg.profile,
        "prompts_file": str(cfg.prompts),
        "prompts_sha256": file_sha256(cfg.prompts),
        "limit": cfg.limit,
        "workdir": str(cfg.workdir),
        "generate": cfg.generate,
        "generate_run": cfg.generate_run,
        "judge": cfg.judge,
        "judge_run": cfg.judge_run,
        "val_fraction": cfg.split.val_fraction,
        "train": cfg.train,
        "deploy_state_dir": str(cfg.state_dir),
        "deploy_timeout_s": cfg.deploy.timeout_s,
        "deploy_port": cfg.deploy.port,
        "model_key": model_key,
        "evaluate": cfg.evaluate,
        "evaluate_judge": cfg.evaluate_judge,
        "evaluate_prompts": str(cfg.evaluate_prompts) if cfg.evaluate_prompts else None,
        "holdout_fraction": cfg.holdout_fraction,
        **({"arena_votes": cfg.rounds.arena_votes, "arena_votes_sha256": file_sha256(Path(cfg.rounds.arena_votes))}
           if cfg.rounds.arena_votes else {}),
        "upload_token": upload_token(cfg.workdir, cfg.profile),
        "deploy_token": deploy_token(cfg.state_dir, cfg.profile),
    }


def sft_adapter_key(folder: str) -> str:
    """modal: the model key of the SFT adapter served from `folder` (NGPT_SFT_ADAPTER): its content hash, which
    names its content-addressed folder (<NAMES.sft_adapters>/<hash>). A new SFT adapter is a new model: new
    samples (the generate folder) and a new cache entry for every step keyed by it. ValueError for another folder."""
    from pipelines.preflight import sft_adapter_problem

    problem = sft_adapter_problem(folder)
    if problem:
        raise ValueError(problem)
    return f"sft-adapter-{PurePosixPath(folder).name}"


def run_pipeline(cfg: PipelineConfig) -> Any:
    """Run the pipeline for `cfg`; returns ZenML's PipelineRunResponse (raises when a step fails)."""
    configured = dpo_pipeline.with_options(
        enable_cache=cfg.enable_cache,
        run_name=f"{PIPELINE_NAME}-{cfg.profile}-{{date}}-{{time}}",
    )
    return configured(**pipeline_parameters(cfg))
