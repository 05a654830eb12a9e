"""The pipeline's two sections that come from the run rather than a YAML section: which prompts, and what a later
round starts from. With the config's sections (GenerateSettings, JudgeSettings, SplitSettings, EvaluateSettings,
the train overrides) and the `TargetSpec` they are the pipeline's whole signature (pipelines/pipeline.py).
Plain dataclasses, no ZenML: the CLI builds them before ZenML's home is set."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class PromptSelection:
    """The prompts a run samples from and evaluates on."""

    file: str = field(metadata={"help": "the JSONL prompt file"})
    sha256: str = field(metadata={"help": "its content hash, taken at launch (a changed file is a new input)"})
    limit: int | None = field(default=None, metadata={"help": "only the first N sampled prompts (None: all)"})
    holdout_fraction: float = field(default=0.0, metadata={
        "help": "share of the prompts (by a hash of each) never sampled nor trained on: the A/B's prompts"})
    offset: int = field(default=0, metadata={"help": "rounds: skip this many sampled prompts (round k's slice)"})
    ab_file: str | None = field(default=None, metadata={
        "help": "a prompt file for the A/B instead (None: the hold-out, else the split's val set)"})


@dataclass(frozen=True)
class RoundInputs:
    """What a later round starts from (all empty in round 1 and a plain run)."""

    previous_adapter_id: str | None = field(default=None, metadata={
        "help": "the previous round's dpo_adapter artifact version: sampled from, trained on from, served beside"})
    earlier_preferences_ids: tuple[str, ...] = field(default=(), metadata={
        "help": "rounds with `data: all`: the earlier rounds' preference artifacts, trained on too"})
    arena_votes: str | None = field(default=None, metadata={"help": "an arena votes file whose pairs join training"})
    arena_votes_sha256: str = field(default="", metadata={"help": "its content hash, taken at launch"})
