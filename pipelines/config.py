"""The pipeline's configuration: one YAML file per profile, validated into `PipelineConfig`.

Order of precedence, lowest first: the dataclass defaults, the YAML file (configs/<profile>.yaml or
--config FILE), the environment (SERVE_URL, OPENAI_BASE_URL, JUDGE_MODEL), then command-line flags.
Secrets (OPENAI_API_KEY, Modal tokens) are never part of the configuration: the stages read them from
the environment when they run, so they never reach ZenML's store.

Unknown keys are rejected with the list of valid ones; a value of the wrong kind (text for a number) is
rejected naming its key (`check_types`); each section is validated by the dataclass that owns it
(GenerateSettings, JudgeSettings, RunOptions, DPOTrainConfig), so the rules live once.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import ConfigError
from engine.options import RunOptions
from pipelines.zenml_home import REPO_ROOT
from serving.scale import ServeScale
from stages.generate import GenerateSettings
from stages.judge.backends import REFERENCE, backend_of
from training.config import check_types
from training.local_kit import DEFAULT_LOCAL_MODEL, check_local_model

if TYPE_CHECKING:  # imported lazily at run time, with the judge
    from stages.evaluate.stage import EvaluateSettings
    from stages.judge.settings import JudgeSettings

PROFILES = ("local", "modal")
DEFAULT_PROFILE = "local"
CONFIG_DIR = REPO_ROOT / "configs"
# In the local profile the generate step points itself at the local vLLM (deploying it when none serves the SFT
# adapter); this placeholder is replaced by the server's URL.
LOCAL_SERVE_URL = "http://127.0.0.1:0/v1"
# Engine options the pipeline sets itself: the prompt subset applies --limit, a step never owns signals.
PIPELINE_RUN_OPTIONS = {
    "limit": "use the top-level `limit` (or --limit): it picks the prompt subset",
    "fresh": "the pipeline keeps one working folder per input and settings; delete it to start over",
    "handle_signals": "always on in the pipeline: Ctrl-C stops scheduling, lets rows in flight finish, and the "
    "step fails with the finished rows kept (a second Ctrl-C exits at once)",
}
# Training settings the pipeline fills in from earlier steps (both profiles) or the local kit (local).
TRAIN_FROM_PIPELINE = {"data_dir": "the upload step's output"}
TRAIN_FROM_LOCAL_KIT = {
    "base_model": "the local kit's base model",
    "sft_adapter": "the local kit's SFT adapter",
    "output_dir": "the working folder",
    "adapter_out": "the working folder",
}
# Where the shipped profiles' prompt files come from, for the message when one is missing (kept out of git).
PROMPT_ORIGINS = {
    REPO_ROOT / "data" / "training" / "val.jsonl": (
        "it is the SFT project's validation split (1,021 scenes, TRL's conversational prompt-completion rows "
        '{"prompt": [system, user], "completion": [assistant]}), not shipped with this repository: copy that '
        "val.jsonl to data/training/val.jsonl"
    ),
}
OFFLINE_DEFAULT = REFERENCE.name  # the local profile's judge unless its config names one

ENV_OVERRIDES = (  # (environment variable, section, key): endpoints and model names, never secrets
    ("SERVE_URL", "generate", "serve_url"),
    ("OPENAI_BASE_URL", "judge", "judge_url"),
    ("JUDGE_MODEL", "judge", "judge_model"),
)


class PipelineConfigError(ConfigError):
    """The configuration is invalid: the message names the key, the rule, the value and the fix. A ConfigError, so
    the CLI ends it with exit 2 and the message, never a traceback."""


@dataclass(frozen=True)
class SplitSettings:
    val_fraction: float = field(default=0.1, metadata={"help": "share of preference pairs held out for eval"})

    def __post_init__(self) -> None:
        if not 0 < self.val_fraction < 1:
            raise PipelineConfigError(
                f"split.val_fraction must be between 0 and 1 (exclusive), got {self.val_fraction}; try 0.1"
            )


@dataclass(frozen=True)
class DeploySettings:
    state_dir: str = field(
        default="data/runs/serving", metadata={"help": "where the deploy records (and local server pid) live"}
    )
    timeout_s: float = field(default=180.0, metadata={"help": "wait this long for every adapter to answer"})
    port: int = field(default=0, metadata={"help": "local profile: the server's port (0: any free port)"})
    scale: ServeScale = field(default_factory=ServeScale, metadata={
        "help": "modal profile: the serving app's replica bounds (serving/scale.py ServeScale: min_containers, "
                "max_containers, sample_max_containers, max_inputs, target_inputs, scaledown_window_s)"})

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise PipelineConfigError(f"deploy.timeout_s must be > 0, got {self.timeout_s}; try 180")
        if not 0 <= self.port <= 65535:
            raise PipelineConfigError(f"deploy.port must be 0 (any free port) or 1-65535, got {self.port}")


PROMPT_MODES = ("fresh", "all")
DATA_MODES = ("round", "all")


@dataclass(frozen=True)
class RoundsSettings:
    """How many rounds, on which prompts, trained on which pairs, stopped when."""

    count: int = field(default=1, metadata={"help": "rounds to run (1: the plain pipeline)"})
    prompts: str = field(default="fresh", metadata={
        "help": "fresh: round k samples the k-th slice of `limit` training prompts (none sampled twice); "
                "all: every round samples the same first `limit` prompts again, from its own policy"})
    data: str = field(default="round", metadata={
        "help": "round: a round trains on its own pairs (sampled from the policy it trains); all: on every "
                "round's pairs so far"})
    arena_votes: str | None = field(default=None, metadata={
        "help": "an arena votes file (`arena --votes FILE`): its decided votes join every round's pairs, marked "
                "source: arena (votes on prompts the A/B evaluates are left out); null: none"})
    min_gain: float = field(default=0.5, metadata={
        "help": "stop when the lower end of the 95% interval of round k's win rate over round k-1 is at or "
                "below this (0.5: no measurable gain)"})

    def __post_init__(self) -> None:
        if isinstance(self.count, bool) or not isinstance(self.count, int) or not 1 <= self.count <= 10:
            raise PipelineConfigError(f"rounds.count must be a whole number from 1 to 10, got {self.count!r}")
        if self.prompts not in PROMPT_MODES:
            raise PipelineConfigError(f"rounds.prompts must be one of {', '.join(PROMPT_MODES)}, got {self.prompts!r}")
        if self.data not in DATA_MODES:
            raise PipelineConfigError(f"rounds.data must be one of {', '.join(DATA_MODES)}, got {self.data!r}")
        if not 0 <= self.min_gain < 1:
            raise PipelineConfigError(f"rounds.min_gain must be in [0, 1), got {self.min_gain!r}; try 0.5")


EVALUATE_EXTRA_HELP = {
    "prompts": "prompt file for the A/B evaluation (null: the split's val set, never trained on)",
    "judge_backend": "openai or reference for the A/B judge (null: the judge section's backend)",
    "max_cost_usd": "USD for the A/B judge, its reruns included (null: no cap)",
}


@dataclass(frozen=True)
class PipelineConfig:
    """Everything one pipeline run needs, validated. Paths are absolute."""

    profile: str
    prompts: Path
    limit: int | None
    workdir: Path
    enable_cache: bool
    generate: GenerateSettings
    generate_run: RunOptions
    judge: JudgeSettings
    judge_run: RunOptions
    split: SplitSettings
    train: dict[str, Any]  # DPOTrainConfig overrides, already checked against DPOTrainConfig
    deploy: DeploySettings
    source: str  # the YAML file it came from
    evaluate: EvaluateSettings | None = None  # the A/B's settings (load_config always sets them)
    evaluate_judge: JudgeSettings | None = None  # the A/B judge (both orders are judged regardless)
    evaluate_prompts: Path | None = None  # None: the hold-out, else the split's val set
    holdout_fraction: float = 0.0  # share of the prompts never sampled nor trained on: the A/B's prompts
    local_model: str = DEFAULT_LOCAL_MODEL  # local profile: the kit (training/local_kit.py)
    rounds: RoundsSettings = field(default_factory=RoundsSettings)  # `run --rounds K` (pipelines/rounds.py)

    @property
    def is_local(self) -> bool:
        return self.profile == "local"

    @property
    def state_dir(self) -> Path:
        return _resolve(self.deploy.state_dir)


TOP_LEVEL_HELP = {
    "profile": f"one of {', '.join(PROFILES)}",
    "prompts": "JSONL prompt file (rows of {prompt, completion?})",
    "limit": "only the first N prompts (null: all)",
    "holdout_fraction": "share of the prompts (by a hash of each prompt) never sampled nor trained on; the A/B "
    "evaluates on them (0: no hold-out, the A/B uses the split's val set)",
    "local_model": "local profile: smollm2 (a real instruct model, the default) or tiny (the fast test model)",
    "workdir": "stable working folder for the stages' checkpoints (default data/dpo/<profile>)",
    "enable_cache": "reuse ZenML's cached results of unchanged steps",
    "generate": "GenerateSettings and RunOptions keys for sampling",
    "judge": "JudgeSettings and RunOptions keys for judging, and tier (1-5: your OpenAI usage tier, whose rpm, tpm "
    "and Batch queue limit pace the judge; stages/judge/tiers.py)",
    "split": "SplitSettings keys (val_fraction)",
    "train": "DPOTrainConfig overrides",
    "deploy": "DeploySettings keys (state_dir, timeout_s, port, scale)",
    "rounds": "RoundsSettings keys (count, prompts, data, min_gain): on-policy rounds, pipelines/rounds.py",
    "evaluate": "EvaluateSettings keys (min_win_rate, baseline, challenger, worst_losses) and prompts, "
    "judge_backend, max_cost_usd",
}


def config_path(profile: str) -> Path:
    return CONFIG_DIR / f"{profile}.yaml"


def load_config(
    *,
    profile: str | None = None,
    config_file: Path | None = None,
    limit: int | None = None,
    workdir: Path | None = None,
    no_cache: bool = False,
    rounds: int | None = None,
    env: Mapping[str, str] | None = None,
) -> PipelineConfig:
    """Read the YAML for `profile` (or `config_file`), apply the environment and the flags, validate.

    The prompt file is an input, not a setting: it need not exist yet (the modal profile's is copied in by hand).
    `prompts_problem(cfg)` says what is wrong with it; `run` stops on that before anything reads the prompts, and
    the modal profile's preflight lists it beside the credentials it lacks."""
    env = os.environ if env is None else env
    if profile is not None and profile not in PROFILES:
        raise PipelineConfigError(f"--profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    path = Path(config_file) if config_file else config_path(profile or DEFAULT_PROFILE)
    raw = _read_yaml(path)
    _reject_unknown(raw, TOP_LEVEL_HELP, f"{path}")
    file_profile = raw.get("profile")
    if file_profile is not None and file_profile not in PROFILES:
        raise PipelineConfigError(f"{path}: profile must be one of {', '.join(PROFILES)}, got {file_profile!r}")
    if profile and file_profile and profile != file_profile:
        raise PipelineConfigError(
            f"--profile {profile} contradicts `profile: {file_profile}` in {path}; drop one of them"
        )
    chosen = profile or file_profile or DEFAULT_PROFILE
    sections = {name: dict(_section(raw, name, path))
                for name in ("generate", "judge", "split", "train", "deploy", "evaluate", "rounds")}
    if rounds is not None:
        sections["rounds"]["count"] = rounds
    for var, section, key in ENV_OVERRIDES:
        if env.get(var):
            sections[section][key] = env[var]
    if chosen == "local":
        sections["generate"]["serve_url"] = LOCAL_SERVE_URL
        sections["judge"].setdefault("backend", OFFLINE_DEFAULT)  # the local profile's judge sends no request
    limit = limit if limit is not None else raw.get("limit")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise PipelineConfigError(f"limit must be a whole number >= 1 or null (all prompts), got {limit!r}")
    prompts = _resolve(_path_value(raw, "prompts", path) or "data/sample/prompts.jsonl")
    holdout = raw.get("holdout_fraction", 0.0)
    if isinstance(holdout, bool) or not isinstance(holdout, int | float) or not 0 <= holdout < 1:
        raise PipelineConfigError(f"{path}: holdout_fraction must be a number in [0, 1), got {holdout!r}; "
                                  "0.2 holds out a fifth of the prompts for the A/B, 0 none")
    local_model = raw.get("local_model", DEFAULT_LOCAL_MODEL)
    try:
        check_local_model(local_model)
    except ValueError as e:
        raise PipelineConfigError(f"{path}: {e}") from e
    enable_cache = raw.get("enable_cache", True)
    if not isinstance(enable_cache, bool):
        raise PipelineConfigError(f"enable_cache must be true or false, got {enable_cache!r}")

    deploy = _deploy_section(sections["deploy"])
    if chosen == "modal" and "concurrency" not in sections["generate"]:
        # Every replica sampling may use, each at its target: Modal adds replicas as this load arrives.
        sections["generate"]["concurrency"] = deploy.scale.sample_concurrency
    generate, generate_run = _settings_and_options(GenerateSettings, sections["generate"], "generate")
    judge_settings_cls = _judge_settings_class()
    judge, judge_run = _settings_and_options(judge_settings_cls, _apply_tier(sections["judge"]), "judge")
    if chosen == "local" and backend_of(judge).sends_requests and judge.judge_url is None:
        raise PipelineConfigError(
            f"the local profile never calls api.openai.com, so judge.backend {judge.backend!r} needs a judge_url "
            "(a local OpenAI-compatible server); use backend 'reference', or --profile modal for GPT-5"
        )
    evaluate, evaluate_judge, evaluate_prompts = _evaluate_section(sections["evaluate"], judge)
    return PipelineConfig(
        evaluate=evaluate,
        evaluate_judge=evaluate_judge,
        evaluate_prompts=evaluate_prompts,
        profile=chosen,
        prompts=prompts,
        limit=limit,
        workdir=_resolve(workdir or _path_value(raw, "workdir", path) or f"data/dpo/{chosen}"),
        enable_cache=enable_cache and not no_cache,
        generate=generate,
        generate_run=generate_run,
        judge=judge,
        judge_run=judge_run,
        split=build(SplitSettings, sections["split"], "split"),
        train=_train_overrides(sections["train"], chosen),
        deploy=deploy,
        source=str(path),
        holdout_fraction=float(holdout),
        local_model=local_model,
        rounds=_rounds_section(sections["rounds"]),
    )


def prompts_problem(cfg: PipelineConfig) -> str | None:
    """What is wrong with the run's prompt file, naming where it comes from and the fix; None: it is a file."""
    prompts, source = cfg.prompts, cfg.source
    if prompts.is_file():
        return None
    what = "is a folder, not a JSONL file" if prompts.is_dir() else "does not exist"
    origin = PROMPT_ORIGINS.get(prompts)
    fix = f"{origin}; or point `prompts:` in {source} at another" if origin else f"set `prompts:` in {source} to a"
    return f"prompts: {prompts} {what}; {fix} JSONL file of {{prompt, completion?}} rows"


def build(cls: type, values: Mapping[str, Any], where: str) -> Any:
    """`cls(**values)` with unknown keys and values of the wrong kind named, and any validation error prefixed
    with `where`."""
    _reject_unknown(values, {f.name: "" for f in dataclasses.fields(cls)}, where)
    _check_types(cls, values, where)
    try:
        return cls(**values)
    except PipelineConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise PipelineConfigError(f"{where}: {e}") from e


def _apply_tier(values: Mapping[str, Any]) -> dict[str, Any]:
    """The judge section with `tier` replaced by its limits (stages/judge/tiers.py) wherever the section does not
    set them: live judging's rpm and tpm, batch mode's enqueued tokens. No tier: no pacing."""
    from stages.judge.tiers import TIERS, tier_problem

    values = dict(values)
    if "tier" not in values:
        return values
    tier = values.pop("tier")
    if tier is None:
        return values
    if (problem := tier_problem(tier)) is not None:
        raise PipelineConfigError(problem)
    limits = TIERS[tier]
    values.setdefault("rpm", limits.rpm)
    values.setdefault("tpm", limits.tpm)
    values.setdefault("batch_max_enqueued_tokens", limits.batch_max_enqueued_tokens)
    return values


def _deploy_section(values: Mapping[str, Any]) -> DeploySettings:
    values = dict(values)
    scale = values.get("scale")
    if isinstance(scale, Mapping):
        values["scale"] = build(ServeScale, scale, "deploy.scale")
    elif scale is not None:
        keys = ", ".join(f.name for f in dataclasses.fields(ServeScale))
        raise PipelineConfigError(f"deploy.scale must be a mapping of ServeScale keys ({keys}), got {scale!r}")
    return build(DeploySettings, values, "deploy")


def _settings_and_options(cls: type, values: Mapping[str, Any], where: str) -> tuple[Any, RunOptions]:
    """Split a section's keys between the stage's settings class and RunOptions, then build both."""
    setting_names = {f.name for f in dataclasses.fields(cls)}
    option_names = {f.name for f in dataclasses.fields(RunOptions)} - set(PIPELINE_RUN_OPTIONS)
    for key, why in PIPELINE_RUN_OPTIONS.items():
        if key in values:
            raise PipelineConfigError(f"{where}.{key} is set by the pipeline and cannot be configured: {why}")
    _reject_unknown(values, {n: "" for n in sorted(setting_names | option_names)}, where)
    settings = {k: v for k, v in values.items() if k in setting_names}
    options = {k: v for k, v in values.items() if k in option_names and k not in setting_names}
    if "prices" in settings and isinstance(settings["prices"], Mapping):
        from stages.judge.cost import Prices

        settings["prices"] = build(Prices, settings["prices"], f"{where}.prices")
    elif settings.get("prices") is not None:
        raise PipelineConfigError(f"{where}.prices must be a mapping of input_per_m, cached_input_per_m and "
                                  f"output_per_m (USD per 1M tokens) or null, got {settings['prices']!r}")
    options["handle_signals"] = True  # see PIPELINE_RUN_OPTIONS
    return build(cls, settings, where), build(RunOptions, options, where)


def _train_overrides(values: Mapping[str, Any], profile: str) -> dict[str, Any]:
    from training.config import DPOTrainConfig

    fixed = {**TRAIN_FROM_PIPELINE, **(TRAIN_FROM_LOCAL_KIT if profile == "local" else {})}
    for key, source in fixed.items():
        if key in values:
            raise PipelineConfigError(f"train.{key} is set by the pipeline from {source}; remove it from the config")
    _reject_unknown(values, {n: "" for n in DPOTrainConfig.field_names()}, "train")
    _check_types(DPOTrainConfig, values, "train")
    try:
        if profile == "local":
            placeholders = {k: f"/placeholder/{k}" for k in TRAIN_FROM_LOCAL_KIT}
            DPOTrainConfig.cpu_test(**{**values, **placeholders, "data_dir": "/placeholder/data"})
        else:
            DPOTrainConfig.from_overrides(dict(values), data_dir="/placeholder/data")
    except (ValueError, TypeError) as e:
        raise PipelineConfigError(f"train: {e}") from e
    return dict(values)


def _evaluate_section(values: Mapping[str, Any], judge: Any) -> tuple[Any, Any, Path | None]:
    """EvaluateSettings, the A/B judge's JudgeSettings (the judge section's, with overrides), the prompt file."""
    from stages.evaluate.stage import EvaluateSettings

    values = dict(values)
    extra = {k: values.pop(k) for k in list(values) if k in EVALUATE_EXTRA_HELP}
    _reject_unknown(values, {**{f.name: "" for f in dataclasses.fields(EvaluateSettings)}, **EVALUATE_EXTRA_HELP},
                    "evaluate")
    settings = build(EvaluateSettings, values, "evaluate")
    overrides = {"max_cost_usd": extra.get("max_cost_usd")}
    if extra.get("judge_backend"):
        overrides["backend"] = extra["judge_backend"]
    _check_types(type(judge), {"max_cost_usd": overrides["max_cost_usd"]}, "evaluate")
    try:
        ab_judge = dataclasses.replace(judge, **overrides)
    except (ValueError, TypeError) as e:
        raise PipelineConfigError(f"evaluate: {e}") from e
    prompts = None
    if _path_value(extra, "prompts", "evaluate"):
        prompts = _resolve(extra["prompts"])
        if not prompts.is_file():
            raise PipelineConfigError(f"evaluate.prompts: no file at {prompts}; give a JSONL prompt file or null")
    return settings, ab_judge, prompts


def _rounds_section(values: Mapping[str, Any]) -> RoundsSettings:
    settings = build(RoundsSettings, values, "rounds")
    if settings.arena_votes is None:
        return settings
    votes = _resolve(settings.arena_votes)
    if not votes.is_file():
        raise PipelineConfigError(f"rounds.arena_votes: no votes file at {votes}; vote in `python -m pipelines.dpo "
                                  "arena --votes FILE` first, or set it to null")
    return dataclasses.replace(settings, arena_votes=str(votes))


def _judge_settings_class() -> type:
    from stages.judge.settings import JudgeSettings

    return JudgeSettings


def _section(raw: Mapping[str, Any], name: str, path: Path) -> Mapping[str, Any]:
    value = raw.get(name) or {}
    if not isinstance(value, Mapping):
        raise PipelineConfigError(f"{path}: `{name}` must be a mapping of settings, got {type(value).__name__}")
    return value


def _check_types(cls: type, values: Mapping[str, Any], where: str) -> None:
    try:
        check_types(cls, values, f"{where}.")
    except ValueError as e:  # training's ConfigError: the container that uses it mounts no engine/ to share one
        raise PipelineConfigError(str(e)) from e


def _path_value(raw: Mapping[str, Any], key: str, where: str | Path) -> str | None:
    """A path setting: text, or null / absent (None)."""
    value = raw.get(key)
    if value is not None and not (isinstance(value, str) and value.strip()):
        raise PipelineConfigError(f"{where}: {key} must be a path (text; relative ones start at the repository "
                                  f"root) or null for the default, got {value!r} ({type(value).__name__})")
    return value


def _reject_unknown(values: Mapping[str, Any], valid: Mapping[str, str], where: str) -> None:
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise PipelineConfigError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; valid keys: {', '.join(sorted(valid))}"
        )


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise PipelineConfigError(f"no config file at {path}; pass --config FILE or --profile {'|'.join(PROFILES)}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise PipelineConfigError(f"{path}:{line}: not UTF-8 text (byte {raw[e.start]:#04x}); save the file as "
                                  "UTF-8") from e
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise PipelineConfigError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise PipelineConfigError(f"{path} must hold a mapping of settings, got {type(data).__name__}")
    return data


def _resolve(value: str | Path) -> Path:
    """Relative paths are relative to the repository root, wherever the command runs from."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else (REPO_ROOT / path).resolve()
