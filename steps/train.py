"""Step: DPO-train the policy adapter: on the CPU with the tiny kit (local) or on Modal's L4 (modal)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Annotated, Any

from zenml import ArtifactConfig, log_metadata, step

from infra.names import NAMES
from steps.names import Artifact
from steps.records import AdapterRef
from steps.stage_io import stage_key

logger = logging.getLogger(__name__)


@step
def train_adapter(
    data_path: str,
    target: str = "local",
    workdir: str = "",
    overrides: dict[str, Any] | None = None,
    model_key: str = "",
    init_adapter: AdapterRef | None = None,
) -> Annotated[AdapterRef, ArtifactConfig(name=Artifact.ADAPTER)]:
    """Train on the split at `data_path`; return a reference to the adapter (path, content hash, metrics).

    local: `DPOTrainConfig.cpu_test` plus `overrides` on the tiny kit; checkpoints and the adapter live in
    `<workdir>/train/<key>/` (key: data path, overrides, kit), so an interrupted run resumes from its
    newest checkpoint and every trained adapter stays where its reference points.
    modal: `training.remote.train_remote` (checkpoints on the volume, resumable, adapter in
    /vol/adapters/...). The weights are never copied into ZenML's store.
    `init_adapter` (a later round): the policy starts from that adapter; the SFT adapter stays the reference.
    """
    overrides = dict(overrides or {})
    if init_adapter is not None:
        overrides["init_adapter"] = init_adapter.path
    if target == "local":
        ref = _train_local(data_path, workdir, overrides, model_key)
    elif target == "modal":
        ref = _train_modal(data_path, overrides)
    else:
        raise ValueError(f"target must be 'local' or 'modal', got {target!r}")
    log_metadata(metadata={
        **{f"dpo_{k.replace('/', '_')}": v for k, v in ref.metrics.items() if _loggable(v)},
        "adapter_path": ref.path,
        "adapter_sha256": ref.sha256,
        "steps": ref.steps,
        "base_model": ref.base_model,
        **({"init_adapter_sha256": init_adapter.sha256} if init_adapter is not None else {}),
    })
    return ref


def _train_local(data_path: str, workdir: str, overrides: dict[str, Any], model_key: str) -> AdapterRef:
    from training.config import DPOTrainConfig
    from training.dpo import train_dpo
    from training.local_kit import ensure_local_kit

    kit = ensure_local_kit(model_key)
    folder = Path(workdir) / "train" / stage_key(data=data_path, overrides=overrides, model=model_key or kit.key)
    config = DPOTrainConfig.cpu_test(
        **overrides,
        data_dir=data_path,
        base_model=str(kit.base_dir),
        sft_adapter=str(kit.sft_adapter_dir),
        output_dir=str(folder / "checkpoints"),
        adapter_out=str(folder / NAMES.dpo_model_name),
    )
    result = train_dpo(config)  # the trainer logs each step itself
    return AdapterRef(name=NAMES.dpo_model_name, path=str(result.adapter_dir), sha256=result.adapter_sha256,
                      base_model=str(kit.base_dir), steps=result.steps, metrics=dict(result.metrics),
                      location="local")


def _train_modal(data_path: str, overrides: dict[str, Any]) -> AdapterRef:
    from training.config import DPOTrainConfig
    from training.remote import train_remote

    result = train_remote(data_path, overrides)
    config = DPOTrainConfig.from_overrides(overrides, data_dir=data_path)
    metrics = {k: v for k, v in result.items() if k not in ("adapter_dir", "adapter_sha256", "metrics_path")}
    return AdapterRef(name=NAMES.dpo_model_name, path=str(result["adapter_dir"]),
                      sha256=str(result["adapter_sha256"]), base_model=config.base_model,
                      steps=int(result.get("steps") or 0), metrics=metrics, location="modal-volume")


def _loggable(value: Any) -> bool:
    if isinstance(value, bool | int | str):
        return True
    return isinstance(value, float) and math.isfinite(value)
