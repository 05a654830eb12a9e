"""Where a run trains and serves: one `Target` per profile (targets/base.py), opened from its `TargetSpec`.

This package is the one place that knows the profiles apart: `target_spec` builds the spec from a config and
`open_target` the implementation from a spec. Steps and pipelines call the target's methods, never compare
profiles (tests/test_targets.py holds them to it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from targets.spec import Operations, TargetSpec, current_operations

if TYPE_CHECKING:
    from pipelines.config import PipelineConfig
    from targets.base import Target

__all__ = ["Operations", "TargetSpec", "current_operations", "open_target", "operations_of", "target_spec"]


def open_target(spec: TargetSpec) -> Target:
    """The target `spec` names."""
    if spec.profile == "local":
        from targets.local import LocalTarget

        return LocalTarget(spec)
    from targets.modal import ModalTarget

    return ModalTarget(spec)


def target_spec(cfg: PipelineConfig) -> TargetSpec:
    """The spec of `cfg`'s target; its model key names the model samples and adapters come from (local: the kit's
    key, so a rebuilt kit is a new model; modal: the served SFT adapter's content hash)."""
    if cfg.profile == "local":
        from training.local_kit import local_model_key

        model_key = local_model_key(cfg.local_model)
    else:
        from infra.names import NAMES
        from targets.modal import sft_adapter_key

        model_key = sft_adapter_key(NAMES.sft_adapter)
    return TargetSpec(profile=cfg.profile, model_key=model_key, workdir=str(cfg.workdir), state_dir=str(cfg.state_dir))


def operations_of(cfg: PipelineConfig) -> Operations:
    """`cfg`'s operational settings (targets/spec.py: never in a cache key)."""
    return Operations(generate_run=cfg.generate_run, judge_run=cfg.judge_run, deploy_timeout_s=cfg.deploy.timeout_s,
                      port=cfg.deploy.port, scale=cfg.deploy.scale)
