"""`run --profile modal --rounds 2` with Modal faked at its call boundary, for tests/test_modal_rounds.py (run in a
subprocess: ZenML's store must be the test's).

Faked, and only these: the volume upload (`training.upload.upload_dataset`: a local folder stands for the volume),
the L4 training call (`training.remote.train_remote`: writes an adapter folder named by its content hash, as the
training app does, without training), `modal deploy` and the volume listing (`serving.modal_deploy._deploy_modal_app`,
`_check_volume_adapters`) and the app's version history (`modal_app_version`, `rollback_modal_app`). The serving
app's endpoint is the project's OpenAI-compatible test server, told on each deploy which adapter folders the new
version serves (/v1/models lists them as vLLM does, with `root`). Everything else is the production path: the CLI,
the preflight, the ZenML pipeline, `ModalTarget`, `deploy_modal`'s checks, the live judge over HTTP.

Usage: python -m tests.modal_rounds_driver BASE SERVER_URL CONFIG; prints one JSON line (what the fakes saw).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
import urllib.request
from pathlib import Path
from typing import Any

SEEN: dict[str, list[Any]] = {"uploads": [], "trains": [], "deploys": [], "rollbacks": [], "scales": [],
                              "sampling_bounds": []}


def _control(server: str, **values: Any) -> None:
    request = urllib.request.Request(f"{server}/_control", data=json.dumps(values).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


def install(base: Path, server: str) -> None:
    import serving.modal_deploy as deploy
    import serving.rollback as rollback
    import training.remote as remote
    import training.upload as upload
    from infra.adapter_hash import adapter_folder_name, adapter_sha256
    from infra.names import NAMES
    from serving.adapters import hash_adapter_dir
    from serving.scale import ServeScale

    volume = base / "volume"
    versions: list[int] = []

    def upload_dataset(train: Path, val: Path) -> str:
        folder = volume / "data" / "dpo" / upload.dataset_hash(train, val)
        folder.mkdir(parents=True, exist_ok=True)
        for src, name in ((train, "train.jsonl"), (val, "val.jsonl")):
            shutil.copyfile(src, folder / name)
        SEEN["uploads"].append(str(folder))
        return str(folder)

    def train_remote(data_path: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        overrides = dict(overrides or {})
        SEEN["trains"].append({"data": data_path, "overrides": overrides})
        staging = volume / "staging"
        staging.mkdir(parents=True, exist_ok=True)
        config = {"peft_type": "LORA", "r": 16, "lora_alpha": 32, "target_modules": ["q_proj", "v_proj"],
                  "base_model_name_or_path": NAMES.base_model}
        (staging / "adapter_config.json").write_text(json.dumps(config))
        seed = hashlib.sha256((data_path + overrides.get("init_adapter", "")).encode()).digest()
        (staging / "adapter_model.safetensors").write_bytes(seed * 64)
        sha = adapter_sha256(staging)
        folder = volume / "adapters" / "nothing-gpt-dpo" / adapter_folder_name(sha)
        if not folder.exists():
            folder.parent.mkdir(parents=True, exist_ok=True)
            staging.rename(folder)
        else:
            shutil.rmtree(staging)
        return {"adapter_dir": str(folder), "adapter_sha256": sha, "steps": 2, "metrics_path": "",
                "train_loss": 0.69}

    def check_volume_adapters(adapters: dict[str, str]) -> dict[str, str | None]:
        return {name: None if name == NAMES.sft_model_name or (Path(path) / "adapter_config.json").is_file()
                else f"no adapter at {path}" for name, path in adapters.items()}

    def deploy_modal_app(adapters: dict[str, str], scale: ServeScale) -> deploy.ModalDeployment:
        SEEN["scales"].append(dataclasses.asdict(scale))
        previous = versions[-1] if versions else None
        versions.append(len(versions) + 1)
        SEEN["deploys"].append(dict(adapters))
        _control(server, models=["gpt-5", NAMES.base_model, *adapters], roots=dict(adapters))
        described = {name: {"path": path, "problem": None, "rank": 16,
                            "sha256": hash_adapter_dir(path) if Path(path).is_dir() else "sha256:sft"}
                     for name, path in adapters.items()}
        return deploy.ModalDeployment(url=server, app_name=NAMES.serve_app, base_model=NAMES.base_model,
                                      adapters=described, version=versions[-1], previous_version=previous)

    def rollback_modal_app(app: str, version: int) -> None:
        SEEN["rollbacks"].append(version)
        versions.append(len(versions) + 1)

    upload.upload_dataset = upload_dataset
    remote.train_remote = train_remote
    deploy._check_volume_adapters = check_volume_adapters
    deploy._deploy_modal_app = deploy_modal_app
    deploy.scale_for_sampling = lambda scale: SEEN["sampling_bounds"].append(scale.sample_max_containers) or True
    deploy.modal_app_version = lambda app: versions[-1] if versions else None
    rollback.modal_app_version = deploy.modal_app_version
    deploy.rollback_modal_app = rollback.rollback_modal_app = rollback_modal_app


def main(argv: list[str]) -> int:
    base, server, config = Path(argv[0]), argv[1], argv[2]
    install(base, server)
    from pipelines.dpo import main as cli

    rc = cli(["run", "--config", config, "--rounds", "2", "--skip-online-checks"])
    print(json.dumps({"rc": rc, **SEEN}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
