"""Step: DPO-train the policy adapter where the target trains (local: the CPU and the kit; modal: an L4)."""

from __future__ import annotations

import logging
import math
from typing import Annotated, Any

from zenml import ArtifactConfig, log_metadata, step

from steps.names import Artifact
from steps.records import AdapterRef
from targets.spec import TargetSpec

logger = logging.getLogger(__name__)


@step
def train_adapter(
    data_path: str,
    target: TargetSpec,
    overrides: dict[str, Any] | None = None,
    init_adapter: AdapterRef | None = None,
) -> Annotated[AdapterRef, ArtifactConfig(name=Artifact.ADAPTER)]:
    """Train on the split at `data_path`; return a reference to the adapter (path, content hash, metrics).
    Resumable from the newest checkpoint on either target; the weights are never copied into ZenML's store
    (targets/local.py, targets/modal.py).
    `init_adapter` (a later round): the policy starts from that adapter; the SFT adapter stays the reference.
    """
    from targets import open_target

    overrides = dict(overrides or {})
    if init_adapter is not None:
        overrides["init_adapter"] = init_adapter.path
    ref = open_target(target).train(data_path, overrides)
    log_metadata(metadata={
        **{f"dpo_{k.replace('/', '_')}": v for k, v in ref.metrics.items() if _loggable(v)},
        "adapter_path": ref.path,
        "adapter_sha256": ref.sha256,
        "steps": ref.steps,
        "base_model": ref.base_model,
        **({"init_adapter_sha256": init_adapter.sha256} if init_adapter is not None else {}),
    })
    return ref


def _loggable(value: Any) -> bool:
    if isinstance(value, bool | int | str):
        return True
    return isinstance(value, float) and math.isfinite(value)
