"""Step: redeploy the served adapters ("seinfeld" SFT + "seinfeld-dpo") and check each one answers.

Whether the server is still up is a fact about now, not about the inputs, so the cache is keyed on it too:
`place_token` (steps/place_tokens.py) is the token of the last deploy while that deployment is still
in place, so a run with nothing changed is served from the cache (no new version, no restart), and a new
one when it is not, so the step runs. When it runs, it is idempotent: if the last deploy's server still
answers with exactly these adapter files, it is kept (no restart) and its record returned.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

from zenml import ArtifactConfig, log_metadata, step

from infra.names import NAMES
from steps.names import Artifact
from steps.records import AdapterRef

logger = logging.getLogger(__name__)


@step
def deploy_adapters(
    adapter: AdapterRef,
    target: str = "local",
    state_dir: str = "data/runs/serving",
    timeout_s: float = 180.0,
    port: int = 0,
    place_token: str = "",
    model_key: str = "",
    previous_adapter: AdapterRef | None = None,
) -> Annotated[dict[str, Any], ArtifactConfig(name=Artifact.DEPLOYMENT)]:
    """local: (re)start the local vLLM (CPU build) with the local kit's base (`model_key`:
    training/local_kit.py), its SFT adapter and `adapter` (and, in a later round, `previous_adapter` as
    "seinfeld-dpo-prev", for the A/B of this round over the last).
    modal: deploy the vLLM app (it serves the adapters on the volume) and wait until both answer.
    Returns the deployment record (URL, models, adapter paths and hashes, readiness time)."""
    from serving.deploy import deploy_local, deploy_modal, live_local

    expected = (NAMES.sft_model_name, NAMES.dpo_model_name)
    if target == "local":
        from training.local_kit import ensure_local_kit

        _check_local_adapter(adapter)
        kit = ensure_local_kit(model_key)
        adapters = {NAMES.sft_model_name: kit.sft_adapter_dir, NAMES.dpo_model_name: Path(adapter.path)}
        if previous_adapter is not None:
            adapters[NAMES.prev_model_name] = Path(previous_adapter.path)
        record = live_local(Path(state_dir), adapters)  # the same adapter files answering: no restart
        reused = record is not None
        if record is None:
            from serving.deploy import load_record
            from serving.rollback import save_previous

            replaced = load_record(Path(state_dir), "local")
            record = deploy_local(kit.base_dir, adapters, state_dir=Path(state_dir), timeout_s=timeout_s, port=port)
            if replaced is not None:
                save_previous(Path(state_dir), replaced)  # what a failed A/B gate rolls back to
    elif target == "modal":
        if previous_adapter is not None:
            raise ValueError("rounds (a previous adapter served beside) are local-only for now")
        from serving.deploy import load_record
        from serving.rollback import save_previous

        reused = False
        replaced = load_record(Path(state_dir), "modal")
        # The trained adapter's own content-addressed folder; the SFT one from NGPT_SFT_ADAPTER. The deploy
        # checks that the live server loaded exactly these folders (vLLM's `root`), else rolls back.
        record = deploy_modal(expected=expected, adapters={NAMES.dpo_model_name: adapter.path},
                              state_dir=Path(state_dir), timeout_s=timeout_s)
        if replaced is not None:
            save_previous(Path(state_dir), replaced)  # what a failed A/B gate's rollback says is live again
        _check_live_adapter(record, adapter)
    else:
        raise ValueError(f"target must be 'local' or 'modal', got {target!r}")
    if place_token:
        from steps.place_tokens import stamp_deploy

        stamp_deploy(Path(state_dir), target, place_token)
    data = record.to_dict()
    logger.info("%s %s at %s: %s", "kept" if reused else "deployed", target, record.base_url, record.models)
    log_metadata(metadata={"target": target, "url": record.url, "base_url": record.base_url,
                           "models": list(record.models), "reused": reused, "ready_seconds": record.ready_seconds,
                           "adapter_sha256": adapter.sha256})
    return {**data, "reused": reused, "trained_adapter_sha256": adapter.sha256}


def _check_local_adapter(adapter: AdapterRef) -> None:
    """The reference must still point at the files it was made from (never deploy a changed adapter)."""
    from training.adapters import adapter_sha256

    path = Path(adapter.path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"the trained adapter {path} is gone (the step that made it was served from ZenML's cache); "
            "rerun with --no-cache to train it again"
        )
    actual = adapter_sha256(path)
    if actual != adapter.sha256:
        raise RuntimeError(
            f"the adapter at {path} changed since it was trained (sha256 {adapter.sha256[:12]}… then, "
            f"{actual[:12]}… now); rerun with --no-cache to train it again"
        )


def _check_live_adapter(record: Any, adapter: AdapterRef) -> None:
    """The DPO adapter the server loaded must be the one this run trained (same content hash)."""
    live = {a.name: a.sha256 for a in record.adapters}.get(NAMES.dpo_model_name)
    if live is None:
        logger.warning("the deployment record has no content hash for %s; cannot verify it", NAMES.dpo_model_name)
        return
    if live != "sha256:" + adapter.sha256:
        raise RuntimeError(
            f"{NAMES.dpo_model_name} is live with adapter files {live[:19]}…, not the ones this run trained "
            f"(sha256:{adapter.sha256[:12]}…); another training run may have overwritten the volume path: "
            "rerun the pipeline with --no-cache"
        )
