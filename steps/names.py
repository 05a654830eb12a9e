"""Every name the pipeline gives ZenML, in one place: artifacts, steps, the pipeline itself.

Tests, the CLI summary and the dashboard all look things up by these names, so they never drift.
"""

from __future__ import annotations

from enum import StrEnum

PIPELINE_NAME = "dpo"


class Artifact(StrEnum):
    """Stable artifact names: each run adds a version under the same name."""

    PROMPTS = "prompt_subset"  # the prompt rows this run samples from
    COMPLETIONS = "completions"  # n sampled completions per prompt
    PREFERENCES = "preferences"  # chosen/rejected pairs from the judge
    QUALITY_REPORT = "quality_report"  # the judge's report (agreement, position bias, skips)
    TRAIN_SET = "train_set"
    VAL_SET = "val_set"
    DATA_PATH = "data_volume_path"  # where the train/val files were uploaded (Modal volume or local folder)
    ADAPTER = "dpo_adapter"  # reference to the trained adapter: path, content hash, metrics
    DEPLOYMENT = "deployment"  # what is live after the redeploy
    AB_EVAL = "ab_eval"  # the judged A/B win rate of the DPO adapter over the SFT one, with charts
    GATE_DECISION = "gate_decision"  # what the gate did with the A/B's verdict: kept the deploy or rolled it back
    PREFERENCES_ALL = "preferences_all_rounds"  # rounds with `data: all`: this round's pairs and the earlier ones
    PREFERENCES_WITH_ARENA = "preferences_with_arena"  # the judged pairs and the arena's vote pairs
    AB_EVAL_PREVIOUS = "ab_eval_vs_previous"  # rounds: this round's DPO adapter over the previous round's
    ROUNDS_REPORT = "rounds_report"  # rounds: the round-by-round table and win-rate chart


# Made only by later rounds or optional steps (pipelines/rounds.py, rounds.arena_votes): not in every run.
OPTIONAL_ARTIFACTS = frozenset({Artifact.PREFERENCES_ALL, Artifact.PREFERENCES_WITH_ARENA, Artifact.AB_EVAL_PREVIOUS,
                                Artifact.ROUNDS_REPORT})


class Step(StrEnum):
    """Step names as they appear in a run (the step functions' names)."""

    SELECT = "select_prompts"
    GENERATE = "generate_completions"
    JUDGE = "judge_preferences"
    SPLIT = "split_dataset"
    UPLOAD = "upload_dataset"
    TRAIN = "train_adapter"
    DEPLOY = "deploy_adapters"
    EVALUATE = "evaluate_adapters"
    PROMOTE = "promote_or_rollback"


# The lineage every run has, in order: each artifact is made from the one before it.
LINEAGE = (
    Artifact.PROMPTS,
    Artifact.COMPLETIONS,
    Artifact.PREFERENCES,
    Artifact.TRAIN_SET,
    Artifact.DATA_PATH,
    Artifact.ADAPTER,
    Artifact.DEPLOYMENT,
)
