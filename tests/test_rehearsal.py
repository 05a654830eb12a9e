"""The Modal functions, run in replicas of their containers (issue 27): only the image's packages, only the mounted
sources, the image's environment, no path to the checkout, and a local folder at /vol standing in for the volume
(tests/rehearsal.py). Opt-in (`-m rehearsal`, `make rehearse`; .ci/run runs it): the first run builds the training
replica's environment (a few minutes), later runs take it from the cache.

What this cannot show, only a real Modal run can: the GPU (here the same 4-bit QLoRA code runs on the CPU),
the CUDA wheels of torch and vLLM, Python 3.12 in the serving image (the replica uses this machine's 3.11),
Modal's scheduler, retries and volume commits (here `volume.commit` is counted, not sent).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import fields
from pathlib import Path

import pytest

from infra.adapter_hash import adapter_sha256
from infra.names import NAMES
from tests.containers import ROOT, training_container
from tests.rehearsal import can_mount, copy_sources, last_json, replica_python, run_in_replica

pytestmark = [pytest.mark.rehearsal, pytest.mark.skipif(can_mount() is not None, reason=str(can_mount()))]


def on_volume(volume_dir: Path, container_path: str) -> Path:
    """Where a container path under the mount (/vol/...) lies in the stand-in folder."""
    return volume_dir / Path(container_path).relative_to(NAMES.mount)


@pytest.fixture(scope="module")
def kit():
    from training.tiny import ensure_tiny_kit

    return ensure_tiny_kit()


def put_adapter(volume_dir: Path, adapter_dir: Path, root: str) -> str:
    """Place an adapter where `upload --adapter` (or training) puts it: its content-hash folder under `root`."""
    from training.upload import volume_adapter_dir

    container_dir = volume_adapter_dir(adapter_dir, root)
    shutil.copytree(adapter_dir, on_volume(volume_dir, container_dir))
    return container_dir


def put_split(volume_dir: Path, data_dir: Path) -> str:
    """Place a split where `upload` puts it: /data/dpo/<hash of train and val> (the volume path it prints)."""
    from training.config import TRAIN_FILE, VAL_FILE
    from training.upload import dataset_hash, volume_data_dir

    remote = volume_data_dir(dataset_hash(data_dir / TRAIN_FILE, data_dir / VAL_FILE))
    shutil.copytree(data_dir, volume_dir / remote.lstrip("/"))
    return remote


def container_env(tmp_path: Path, **names: str) -> dict[str, str]:
    """The image's environment: its NGPT_* names (as the deploying side resolved them) and its own settings."""
    from infra.names import ENV_VARS

    env = {**NAMES.env(), **{ENV_VARS[field][0]: value for field, value in names.items()}}
    (tmp_path / "home").mkdir()
    return {**env, "HOME": str(tmp_path / "home"), "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def cpu_overrides() -> dict:
    """The settings a CPU run changes from the L4 defaults (the same 4-bit QLoRA path, a couple of steps)."""
    from training.config import DPOTrainConfig

    default, cpu = DPOTrainConfig(), DPOTrainConfig.cpu_test()
    return {f.name: getattr(cpu, f.name) for f in fields(cpu) if getattr(cpu, f.name) != getattr(default, f.name)}


TRAIN_IN_REPLICA = """
import importlib.util, json, sys
outside = [name for name in ("engine", "stages", "pipelines", "steps", "serving", "tests")
           if importlib.util.find_spec(name)]
import training.modal_app as app
commits = []
app.volume.commit = lambda: commits.append(len(commits))  # the volume is the bind-mounted folder: nothing to send
data_path, bad_path, overrides = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
out = {"check": app.check_run.local(data_path, overrides), "train": app.train.local(data_path, overrides)}
out["commits"] = len(commits)
out["again"] = app.check_run.local(data_path, overrides)  # what a rerun (or a retry's new container) would see
out["bad"] = app.train.local(bad_path, overrides)
out["outside"] = outside
out["sys_path"] = sys.path
print("REHEARSAL " + json.dumps(out))
"""


def test_check_run_and_train_run_from_the_mounted_sources_and_the_images_packages_alone(kit, tmp_path):
    from training.tiny import write_sample_preferences

    container = training_container()
    python = replica_python(container.packages)
    sources = copy_sources(container.sources, tmp_path / "root", ROOT)
    volume = tmp_path / "vol"
    sft = put_adapter(volume, kit.sft_adapter_dir, NAMES.sft_adapters)
    data_path = put_split(volume, write_sample_preferences(tmp_path / "split"))
    bad = write_sample_preferences(tmp_path / "bad")
    with (bad / "train.jsonl").open("a") as f:
        f.write('{"prompt": "[JERRY] Hi.", "chosen": "same", "rejected": "same"}\n')
    bad_path = put_split(volume, bad)
    env = container_env(tmp_path, base_model=str(kit.base_dir), sft_adapter=sft, wandb_secret="")

    out = last_json(run_in_replica(python, sources, volume, env, TRAIN_IN_REPLICA, data_path, bad_path,
                                   json.dumps(cpu_overrides())))

    assert out["outside"] == [] and str(ROOT) not in out["sys_path"]  # nothing of the checkout was importable
    check, train = out["check"], out["train"]
    assert check["checkpoint_dir"].startswith(f"{NAMES.checkpoints}/") and check["resume_from"] is None
    assert "input_error" not in train, train.get("input_error")
    adapter = on_volume(volume, train["adapter_dir"])
    assert train["adapter_dir"].startswith(f"{NAMES.dpo_adapters}/") and (adapter / "adapter_config.json").is_file()
    assert train["adapter_sha256"] == adapter_sha256(adapter)  # the files the volume holds are the ones reported
    assert train["checkpoint_dir"] == check["checkpoint_dir"] and train["train_loss"] > 0
    assert out["commits"] >= 2  # after the checkpoint save and after the adapter
    assert out["again"]["resume_from"].startswith(check["checkpoint_dir"] + "/checkpoint-")  # kept on the volume
    assert out["bad"]["input_error"].startswith(f"{NAMES.mount}{bad_path}/train.jsonl:")  # file:line, not retried
    assert "teaches nothing" in out["bad"]["input_error"]


SERVE_IN_REPLICA = """
import importlib.util, json
outside = [name for name in ("engine", "stages", "pipelines", "steps", "training", "tests")
           if importlib.util.find_spec(name)]
import serving.modal_app as app
described = app.describe_adapters.local()
started = []
app.subprocess.Popen = lambda cmd, env: started.append([cmd, {k: v for k, v in env.items() if k.startswith("VLLM")}])
app.serve.local()  # the start-up code, up to the point where it would exec vLLM
print("REHEARSAL " + json.dumps({"described": described, "started": started, "outside": outside}))
"""


def run_serving_replica(kit, tmp_path: Path, *, with_dpo: bool) -> tuple[dict, str, str]:
    """The serving start-up in its replica: the SFT adapter on the stand-in volume, the DPO one too or a folder that
    is not there. Returns what the replica printed and the two adapter paths it was given."""
    from serving import modal_app
    from tests.containers import serving_container

    container = serving_container()
    python = replica_python(container.packages)
    sources = copy_sources(container.sources, tmp_path / "root", ROOT)
    volume = tmp_path / "vol"
    sft = put_adapter(volume, kit.sft_adapter_dir, NAMES.sft_adapters)
    dpo = (put_adapter(volume, kit.dpo_adapter_dir, NAMES.dpo_adapters) if with_dpo
           else f"{NAMES.dpo_adapters}/0000000000000000")
    env = {**container_env(tmp_path, base_model=str(kit.base_dir), sft_adapter=sft, dpo_adapter=dpo),
           modal_app.API_KEY_VAR: "rehearsal-key"}  # what the serve-key secret puts in the container
    return last_json(run_in_replica(python, sources, volume, env, SERVE_IN_REPLICA)), sft, dpo


def test_the_serving_start_up_builds_its_command_from_the_adapters_on_the_volume(kit, tmp_path):
    out, sft, dpo = run_serving_replica(kit, tmp_path, with_dpo=True)

    assert out["outside"] == []
    described = out["described"]
    assert described[NAMES.sft_model_name]["problem"] is None and described[NAMES.dpo_model_name]["problem"] is None
    assert described[NAMES.sft_model_name]["sha256"] == f"sha256:{adapter_sha256(kit.sft_adapter_dir)}"
    (cmd, vllm_env), = out["started"]
    assert vllm_env["VLLM_API_KEY"] == "rehearsal-key" and not any("rehearsal-key" in arg for arg in cmd)
    assert "--enable-lora" in cmd and str(kit.base_dir) in cmd
    modules = cmd[cmd.index("--lora-modules") + 1:]
    assert any(sft in arg for arg in modules) and any(dpo in arg for arg in modules)


def test_an_adapter_missing_from_the_volume_is_left_out_and_the_server_still_starts(kit, tmp_path):
    out, sft, missing = run_serving_replica(kit, tmp_path, with_dpo=False)

    assert out["described"][NAMES.dpo_model_name]["problem"] is not None
    (cmd, _), = out["started"]
    assert any(sft in arg for arg in cmd) and not any(missing in arg for arg in cmd)
