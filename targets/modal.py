"""The Modal target: the training app on an L4, the serving app, the volume (infra/names.py names them all).

Uploads, adapters and data are content-addressed folders on the volume, never overwritten. A deploy is a new
version of the serving app with its adapter folders in its image's environment; `rollback` returns the app to
the version live before, by number. Every Modal call sits behind the functions this module calls
(training/upload.py, training/remote.py, serving/modal_deploy.py), which the offline tests fake.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from infra.names import NAMES

if TYPE_CHECKING:
    from serving.records import DeployRecord
    from stages.generate import GenerateSettings
    from steps.records import AdapterRef
    from targets.spec import Operations, TargetSpec

logger = logging.getLogger(__name__)


def sft_adapter_key(folder: str) -> str:
    """The model key of the SFT adapter served from `folder` (NGPT_SFT_ADAPTER): its content hash, which names its
    content-addressed folder (<NAMES.sft_adapters>/<hash>). A new SFT adapter is a new model: new samples (the
    generate folder) and a new cache entry for every step keyed by it. ValueError for another folder."""
    from pipelines.preflight import sft_adapter_problem

    problem = sft_adapter_problem(folder)
    if problem:
        raise ValueError(problem)
    return f"sft-adapter-{PurePosixPath(folder).name}"


class ModalTarget:
    def __init__(self, spec: TargetSpec) -> None:
        self.spec = spec
        self.state_dir = Path(spec.state_dir)

    def sampling_endpoint(self, settings: GenerateSettings, adapter: AdapterRef | None,
                          ops: Operations) -> tuple[GenerateSettings, str | None]:
        """SFT: the configured endpoint (`generate.serve_url`, SERVE_URL). A later round's `adapter`: the serving
        app with it as `settings.model` (what the previous round deployed; deployed now when it is not live).
        Either way the serving app's replica bound is raised to `ops.scale.sample_max_containers` for the sampling
        (the next deploy returns it to the A/B's bound)."""
        import dataclasses

        from serving.modal_deploy import scale_for_sampling

        if adapter is None:
            scale_for_sampling(ops.scale)
            return settings, self.api_key()
        record = self.deployment()
        live = {a.name: a.sha256 for a in record.adapters} if record is not None else {}
        if live.get(settings.model) != "sha256:" + adapter.sha256:
            logger.info("the Modal app does not serve the adapter to sample from as %s: deploying it", settings.model)
            record = self._deploy({settings.model: adapter.path}, ops)
        scale_for_sampling(ops.scale)
        return dataclasses.replace(settings, serve_url=record.base_url), self.api_key()

    def upload(self, train: Path, val: Path) -> str:
        from training.upload import upload_dataset

        return upload_dataset(train, val)

    def uploads_in_place(self, paths: list[str]) -> bool:
        return True  # content-addressed folders on the volume that this project never deletes

    def train(self, data_path: str, overrides: dict[str, Any]) -> AdapterRef:
        """`training.remote.train_remote`: checkpoints on the volume (resumable), the adapter in its
        content-addressed folder there. The weights are never copied into ZenML's store."""
        from steps.records import AdapterRef
        from training.config import DPOTrainConfig
        from training.remote import train_remote

        result = train_remote(data_path, overrides)
        config = DPOTrainConfig.from_overrides(overrides, data_dir=data_path)
        metrics = {k: v for k, v in result.items() if k not in ("adapter_dir", "adapter_sha256", "metrics_path")}
        return AdapterRef(name=NAMES.dpo_model_name, path=str(result["adapter_dir"]),
                          sha256=str(result["adapter_sha256"]), base_model=config.base_model,
                          steps=int(result.get("steps") or 0), metrics=metrics, location="modal-volume")

    def adapter_in_place(self, path: str, sha256: str) -> bool:
        """The folder is named by its content hash and this project never rewrites one: the name must match and
        the volume must still list it as loadable."""
        from infra.adapter_hash import adapter_folder_name
        from serving.modal_deploy import check_volume_adapters

        if PurePosixPath(path).name != adapter_folder_name(sha256):
            return False
        return check_volume_adapters({NAMES.dpo_model_name: path}).get(NAMES.dpo_model_name) is None

    def serve(self, adapters: Mapping[str, AdapterRef], ops: Operations) -> tuple[DeployRecord, bool]:
        """Deploy the serving app with SFT and each of `adapters` under its name (vLLM's max_loras follows the
        count) and wait until each answers from the folder asked for, else roll back (serving/modal_deploy.py)."""
        record = self._deploy({name: a.path for name, a in adapters.items()}, ops)
        for name, adapter in adapters.items():
            self._check_live_adapter(record, name, adapter)
        return record, False

    def deployment(self) -> DeployRecord | None:
        from serving.records import load_record

        return load_record(self.state_dir, "modal")

    def deployment_in_place(self, record: DeployRecord) -> bool:
        return True  # persistent until stopped; asking would wake a GPU (`deploy --stop` removes the record)

    def api_key(self) -> str | None:
        from serving.modal_deploy import API_KEY_VAR

        return os.environ.get(API_KEY_VAR)

    def rollback(self, rejected: DeployRecord, ops: Operations) -> str:
        from serving.rollback import rollback_modal

        live = rollback_modal(self.state_dir, rejected)  # to the version live before, by number; records follow
        if live is None:
            return (f"{rejected.app_name or NAMES.serve_app} is back at v{rejected.previous_app_version}, whose "
                    "adapters are not recorded here (the deployment record was removed: the next run deploys)")
        version = f" as v{live.app_version}" if live.app_version is not None else ""
        return f"the Modal app serves {({a.name: a.path for a in live.adapters})} again{version}"

    def _deploy(self, adapters: dict[str, str], ops: Operations) -> DeployRecord:
        """Deploy SFT (NGPT_SFT_ADAPTER) plus `adapters`, every one expected to answer; keep the record it replaces
        for a rollback."""
        from serving.modal_deploy import deploy_modal
        from serving.records import load_record
        from serving.rollback import save_previous

        replaced = load_record(self.state_dir, "modal")
        record = deploy_modal(expected=(NAMES.sft_model_name, *adapters), adapters=adapters,
                              state_dir=self.state_dir, timeout_s=ops.deploy_timeout_s, scale=ops.scale)
        if replaced is not None:
            save_previous(self.state_dir, replaced)  # what a failed A/B gate's rollback says is live again
        return record

    @staticmethod
    def _check_live_adapter(record: DeployRecord, name: str, adapter: AdapterRef) -> None:
        """The adapter the server loaded as `name` must be the one asked for (same content hash)."""
        live = {a.name: a.sha256 for a in record.adapters}.get(name)
        if live is None:
            logger.warning("the deployment record has no content hash for %s; cannot verify it", name)
            return
        if live != "sha256:" + adapter.sha256:
            raise RuntimeError(
                f"{name} is live with adapter files {live[:19]}…, not the ones asked for "
                f"(sha256:{adapter.sha256[:12]}…); another training run may have overwritten the volume path: "
                "rerun the pipeline with --no-cache"
            )
