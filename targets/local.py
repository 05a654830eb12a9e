"""The local target: a local kit (training/local_kit.py), the working folder as the volume, the local vLLM.

Everything runs on this machine: training on the CPU (`DPOTrainConfig.cpu_test`), serving with vLLM's CPU build
(serving/local_vllm.py). The layout on disk is the volume's, under `<workdir>/volume`.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infra.names import NAMES

if TYPE_CHECKING:
    from serving.records import DeployRecord
    from stages.generate import GenerateSettings
    from steps.records import AdapterRef
    from targets.spec import Operations, TargetSpec

logger = logging.getLogger(__name__)
LIVE_CHECK_TIMEOUT_S = 10.0  # how long a launch waits for the local server to answer before redeploying


def adapter_in_place(path: str, sha256: str) -> bool:
    """The adapter folder at `path` (on this machine) still holds the files with this content hash."""
    from training.adapters import adapter_sha256

    return Path(path).is_dir() and adapter_sha256(Path(path)) == sha256


class LocalTarget:
    def __init__(self, spec: TargetSpec) -> None:
        self.spec = spec
        self.state_dir = Path(spec.state_dir)

    def kit(self) -> Any:
        from training.local_kit import ensure_local_kit

        return ensure_local_kit(self.spec.model_key)

    def sampling_endpoint(self, settings: GenerateSettings, adapter: AdapterRef | None,
                          ops: Operations) -> tuple[GenerateSettings, str | None]:
        """The local vLLM serving the kit's SFT adapter as `settings.model` (with `adapter`: SFT and that one as
        `settings.model`): the one already running when it serves them (it may serve more), else one started now
        (it stays up; the deploy step redeploys it with the DPO adapter)."""
        import dataclasses

        from serving.local_deploy import deploy_local, live_local

        kit = self.kit()
        adapters = {settings.model: kit.sft_adapter_dir}
        if adapter is not None:
            adapters = {NAMES.sft_model_name: kit.sft_adapter_dir, settings.model: Path(adapter.path)}
        record = live_local(self.state_dir, adapters, exact=False)
        if record is None:
            record = deploy_local(kit.base_dir, adapters, state_dir=self.state_dir, timeout_s=ops.deploy_timeout_s,
                                  port=ops.port)
        else:
            logger.info("sampling from the local server already running at %s", record.base_url)
        return dataclasses.replace(settings, serve_url=record.base_url), self.api_key()

    def upload(self, train: Path, val: Path) -> str:
        from training.config import TRAIN_FILE, VAL_FILE
        from training.upload import dataset_hash, volume_data_dir

        folder = Path(self.spec.workdir) / "volume" / volume_data_dir(dataset_hash(train, val)).lstrip("/")
        folder.mkdir(parents=True, exist_ok=True)
        for src, name in ((train, TRAIN_FILE), (val, VAL_FILE)):
            shutil.copyfile(src, folder / name)
        return str(folder)

    def uploads_in_place(self, paths: list[str]) -> bool:
        from training.config import TRAIN_FILE, VAL_FILE

        return all((Path(p) / name).is_file() for p in paths for name in (TRAIN_FILE, VAL_FILE))

    def train(self, data_path: str, overrides: dict[str, Any]) -> AdapterRef:
        """`DPOTrainConfig.cpu_test` plus `overrides` on the kit; checkpoints and the adapter in
        `<workdir>/train/<key>/` (key: data path, overrides, kit), so an interrupted run resumes from its newest
        checkpoint and every trained adapter stays where its reference points."""
        from steps.records import AdapterRef
        from steps.stage_io import stage_key
        from training.config import DPOTrainConfig
        from training.dpo import train_dpo

        kit = self.kit()
        folder = Path(self.spec.workdir) / "train" / stage_key(data=data_path, overrides=overrides,
                                                                model=self.spec.model_key or kit.key)
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

    def adapter_in_place(self, path: str, sha256: str) -> bool:
        return adapter_in_place(path, sha256)

    def serve(self, adapters: Mapping[str, AdapterRef], ops: Operations) -> tuple[DeployRecord, bool]:
        """(Re)start the local vLLM with the kit's base, its SFT adapter and each of `adapters` under its name;
        kept without a restart when it already serves exactly these files."""
        from serving.local_deploy import deploy_local, live_local
        from serving.records import load_record
        from serving.rollback import save_previous

        for adapter in adapters.values():
            self._check_adapter(adapter)
        kit = self.kit()
        folders = {NAMES.sft_model_name: kit.sft_adapter_dir, **{n: Path(a.path) for n, a in adapters.items()}}
        record = live_local(self.state_dir, folders)  # the same adapter files answering: no restart
        if record is not None:
            return record, True
        replaced = load_record(self.state_dir, "local")
        record = deploy_local(kit.base_dir, folders, state_dir=self.state_dir, timeout_s=ops.deploy_timeout_s,
                              port=ops.port)
        if replaced is not None:
            save_previous(self.state_dir, replaced)  # what a failed A/B gate rolls back to
        return record, False

    def deployment(self) -> DeployRecord | None:
        from serving.records import load_record

        return load_record(self.state_dir, "local")

    def deployment_in_place(self, record: DeployRecord) -> bool:
        from serving.local_deploy import live_local

        adapters = {a.name: Path(a.path) for a in record.adapters}
        if not adapters or not all(p.is_dir() for p in adapters.values()):
            return False
        return live_local(self.state_dir, adapters, timeout_s=LIVE_CHECK_TIMEOUT_S) is not None

    def api_key(self) -> str | None:
        from serving.local_deploy import local_api_key

        return local_api_key(self.state_dir)

    def rollback(self, rejected: DeployRecord, ops: Operations) -> str:
        from serving.rollback import rollback_local

        kit = self.kit()
        live = rollback_local(self.state_dir, kit.base_dir, {NAMES.sft_model_name: kit.sft_adapter_dir},
                              timeout_s=ops.deploy_timeout_s, port=ops.port)
        served = {a.name: a.path for a in live.adapters}
        if NAMES.dpo_model_name not in served:
            return f"the local server serves {NAMES.sft_model_name} alone (no earlier DPO adapter to go back to)"
        return f"the local server serves {NAMES.dpo_model_name} from {served[NAMES.dpo_model_name]} again"

    def _check_adapter(self, adapter: AdapterRef) -> None:
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
