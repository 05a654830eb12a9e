"""The ZenML pipeline: prompts -> completions -> preferences -> train/val -> uploaded data -> adapter -> deployment
-> A/B evaluation -> kept or rolled back.

Import this module only after `pipelines.zenml_home.init_zenml()` (it imports ZenML); the CLI does so.
Every step gets only parameters that define its output (settings, content hashes, the model's key), so
ZenML's cache is right to skip a step whose parameters and inputs are unchanged; secrets never appear.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zenml import pipeline

from engine.rows import file_sha256
from pipelines.config import PipelineConfig, SplitSettings
from pipelines.sections import PromptSelection, RoundInputs
from stages.evaluate.stage import EvaluateSettings
from stages.generate import GenerateSettings
from stages.judge.settings import JudgeSettings
from steps import (
    add_arena_pairs,
    deploy_adapters,
    evaluate_adapters,
    evaluate_vs_previous,
    generate_completions,
    judge_preferences,
    merge_preferences,
    promote_or_rollback,
    select_prompts,
    split_dataset,
    train_adapter,
    upload_dataset,
)
from steps.names import PIPELINE_NAME
from targets.spec import TargetSpec


@pipeline(name=PIPELINE_NAME)
def dpo_pipeline(
    target: TargetSpec,
    prompts: PromptSelection,
    generate: GenerateSettings,
    judge: JudgeSettings,
    split: SplitSettings,
    train: dict[str, Any],
    evaluate: EvaluateSettings,
    evaluate_judge: JudgeSettings,
    round_inputs: RoundInputs = RoundInputs(),  # noqa: B008 (a frozen dataclass: immutable)
    upload_token: str = "",
    deploy_token: str = "",
) -> None:
    """Sample, judge, split, upload, train, redeploy, A/B-evaluate and keep or roll back, on `target` (targets/).
    With `prompts.holdout_fraction` > 0 that share of the prompt file (by a hash of the prompt) is never sampled nor
    trained on, and the A/B evaluates on it instead of the split's val set. How the steps run (concurrency,
    timeouts, the port) is no parameter: `run_pipeline` passes it in ZenML's `extra` (targets/spec.py). The two
    place tokens key the upload and deploy steps on whether what they made is still in place
    (steps/place_tokens.py).

    A later round (pipelines/rounds.py) names the previous round's `dpo_adapter` version in `round_inputs`: it is
    sampled from, trained on from (the SFT adapter stays the reference), served beside as seinfeld-dpo-prev and
    A/B'd against; `prompts.offset` picks the round's slice of prompts, `round_inputs.earlier_preferences_ids` the
    pairs it trains on too."""
    previous = _artifact(round_inputs.previous_adapter_id)  # an input artifact: lineage from the previous round
    sampled = select_prompts(prompts_file=prompts.file, prompts_sha256=prompts.sha256, limit=prompts.limit,
                             holdout_fraction=prompts.holdout_fraction, side="sample", offset=prompts.offset)
    completions = generate_completions(sampled, settings=generate, target=target, sample_adapter=previous)
    preferences, _report = judge_preferences(completions, workdir=target.workdir, settings=judge)
    for number, earlier in enumerate(round_inputs.earlier_preferences_ids, start=1):
        preferences = merge_preferences(preferences, _artifact(earlier), id=f"merge_preferences_{number}")
    if round_inputs.arena_votes:  # the arena's decided votes join this round's pairs (never on the A/B's prompts)
        preferences = add_arena_pairs(preferences, votes_file=round_inputs.arena_votes,
                                      votes_sha256=round_inputs.arena_votes_sha256, prompts_file=prompts.file,
                                      holdout_fraction=prompts.holdout_fraction, evaluate_prompts=prompts.ab_file)
    train_set, val_set = split_dataset(preferences, val_fraction=split.val_fraction)
    data_path = upload_dataset(train_set, val_set, target=target, place_token=upload_token)
    adapter = train_adapter(data_path, target=target, overrides=train, init_adapter=previous)
    deploy_adapters(adapter, target=target, place_token=deploy_token, previous_adapter=previous)
    if prompts.holdout_fraction > 0:  # the prompts nothing sampled: the A/B's (unless prompts.ab_file names a file)
        val_set = select_prompts(prompts_file=prompts.file, prompts_sha256=prompts.sha256,
                                 holdout_fraction=prompts.holdout_fraction, side="holdout",
                                 id="select_holdout_prompts")
    ab_eval = evaluate_adapters(adapter, val_set, generate=generate, judge=evaluate_judge, settings=evaluate,
                                target=target, prompts_file=prompts.ab_file, after="deploy_adapters")
    promote_or_rollback(ab_eval, target=target)
    if previous is not None:
        evaluate_vs_previous(adapter, previous, val_set, generate=generate, judge=evaluate_judge, settings=evaluate,
                             target=target, prompts_file=prompts.ab_file, after="evaluate_adapters")


def _artifact(version_id: str | None) -> Any:
    """The artifact version with this id (a step input that records lineage), or None."""
    if not version_id:
        return None
    from zenml.client import Client

    return Client().get_artifact_version(version_id)


def pipeline_parameters(cfg: PipelineConfig) -> dict[str, Any]:
    """The pipeline's parameters for `cfg`: what defines its outputs. The prompt file's hash and the place tokens
    (is the uploaded data still there, is the deployment still live: steps/place_tokens.py) are taken now, at
    launch."""
    from steps.place_tokens import deploy_token, upload_token
    from targets import target_spec

    spec = target_spec(cfg)
    votes = cfg.rounds.arena_votes
    return {
        "target": spec,
        "prompts": PromptSelection(file=str(cfg.prompts), sha256=file_sha256(cfg.prompts), limit=cfg.limit,
                                   holdout_fraction=cfg.holdout_fraction,
                                   ab_file=str(cfg.evaluate_prompts) if cfg.evaluate_prompts else None),
        "generate": cfg.generate,
        "judge": cfg.judge,
        "split": cfg.split,
        "train": cfg.train,
        "evaluate": cfg.evaluate,
        "evaluate_judge": cfg.evaluate_judge,
        "round_inputs": RoundInputs(arena_votes=votes, arena_votes_sha256=file_sha256(Path(votes)) if votes else ""),
        "upload_token": upload_token(spec),
        "deploy_token": deploy_token(spec),
    }


def configured_pipeline(cfg: PipelineConfig, run_name: str) -> Any:
    """`dpo_pipeline` with `cfg`'s cache setting, this run name and its `Operations` in ZenML's `extra` (recorded
    with the run, read by the steps, in no cache key)."""
    from targets import operations_of

    return dpo_pipeline.with_options(enable_cache=cfg.enable_cache, run_name=run_name,
                                     extra=operations_of(cfg).to_extra())


def run_pipeline(cfg: PipelineConfig) -> Any:
    """Run the pipeline for `cfg`; returns ZenML's PipelineRunResponse (raises when a step fails)."""
    configured = configured_pipeline(cfg, f"{PIPELINE_NAME}-{cfg.profile}-{{date}}-{{time}}")
    return configured(**pipeline_parameters(cfg))
