"""What a pipeline run tells its steps about where it runs, split in two by what ZenML's cache may see.

- `TargetSpec` defines outputs: the profile, the model the samples and adapters come from, and the folders the
  stages keep their results in. Every step that touches a target takes it as a parameter, so it is in their
  cache keys: a new SFT adapter or another working folder is a new output.
- `Operations` says how the steps run: the engine's run options (concurrency, retries, progress), the deploy's
  timeout and the local server's port. None of them changes an output, so none is a step parameter: the
  pipeline carries them in ZenML's `extra` configuration, which the run records (the dashboard shows it) and
  no cache key reads. A rerun with another port or timeout reuses every cached step.

No ZenML import at module level: the CLI builds both before ZenML's home is set.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from engine.errors import ConfigError
from engine.options import RunOptions
from serving.scale import ServeScale

PROFILES = ("local", "modal")
EXTRA_KEY = "operations"  # the key of `Operations` in the pipeline's (and so every step's) `extra`


@dataclass(frozen=True)
class TargetSpec:
    """The target a run's outputs live on (targets/__init__.py `open_target` opens it)."""

    profile: str = field(metadata={"help": "local (a kit, a folder, the local vLLM) or modal (the apps, the volume)"})
    model_key: str = field(metadata={"help": "the model that samples and is trained on: the local kit's key, or "
                                             "sft-adapter-<hash> of the SFT adapter on the volume"})
    workdir: str = field(metadata={"help": "the stages' working folder (checkpoints; local: the volume stand-in)"})
    state_dir: str = field(metadata={"help": "where the deployment records (and the local server's state) live"})

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ConfigError(f"target profile must be one of {', '.join(PROFILES)}, got {self.profile!r}")


@dataclass(frozen=True)
class Operations:
    """How the steps run, never what they make (so never in a cache key; see the module docstring)."""

    generate_run: RunOptions = field(default_factory=RunOptions, metadata={
        "help": "the engine's options for sampling, the A/B's sampling included"})
    judge_run: RunOptions = field(default_factory=RunOptions, metadata={
        "help": "the engine's options for judging, the A/B's judge included"})
    deploy_timeout_s: float = field(default=180.0, metadata={"help": "wait this long for every adapter to answer"})
    port: int = field(default=0, metadata={"help": "local profile: the server's port (0: any free port)"})
    scale: ServeScale = field(default_factory=ServeScale, metadata={
        "help": "modal profile: the serving app's replica bounds while sampling and after a deploy"})

    def ab_sampling(self) -> RunOptions:
        """`generate_run` for the A/B's sampling: no more in flight than the A/B's replica bound takes at once
        (sampling's own concurrency fills `scale.sample_max_containers` replicas)."""
        bound = self.scale.max_containers * self.scale.max_inputs
        return dataclasses.replace(self.generate_run, concurrency=min(self.generate_run.concurrency, bound))

    def to_extra(self) -> dict[str, Any]:
        """The `extra` entry that carries these to every step (plain JSON)."""
        return {EXTRA_KEY: dataclasses.asdict(self)}

    @classmethod
    def from_extra(cls, extra: dict[str, Any] | None) -> Operations:
        """Back from `to_extra`'s entry; the defaults where a run carried none (a step called outside a run)."""
        data = dict((extra or {}).get(EXTRA_KEY) or {})
        for name in ("generate_run", "judge_run"):
            if isinstance(data.get(name), dict):
                data[name] = RunOptions(**data[name])
        if isinstance(data.get("scale"), dict):
            data["scale"] = ServeScale(**data["scale"])
        return cls(**data)


def current_operations() -> Operations:
    """The running step's `Operations` (from its `extra`); the defaults outside a step."""
    import sys

    if "zenml" not in sys.modules:  # no step runs in a process that never imported ZenML
        return Operations()
    from zenml import get_step_context

    try:
        context = get_step_context()
    except RuntimeError:  # not inside a step: a direct call (tests, tools)
        return Operations()
    return Operations.from_extra(context.step_run.config.extra)
