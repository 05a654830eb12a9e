"""Rounds on the modal profile, with Modal faked only at its call boundary (tests/modal_rounds_driver.py): the
proof that one target serves both profiles. Round 2 samples from round 1's adapter where the serving app serves it,
trains on from it, and deploys a version serving three adapters (SFT, the new DPO one, and round 1's as
seinfeld-dpo-prev), each checked live by its folder; a rerun trusts the records while their folders are on the
(stand-in) volume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SFT_FOLDER = "/vol/adapters/nothing-gpt/0123456789abcdef"

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


def _driver(base: Path, server: str, config: Path) -> dict:
    """Run the driver against the test server at its root URL `server`; what the fakes saw, and its stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NGPT_", "MODAL_"))}
    env.update({"ZENML_CONFIG_PATH": str(base / "zenml"), "NGPT_SFT_ADAPTER": SFT_FOLDER,
                "SERVE_URL": f"{server}/v1", "SERVE_API_KEY": "serve-key", "OPENAI_API_KEY": "sk-test",
                "MODAL_TOKEN_ID": "ak-test", "MODAL_TOKEN_SECRET": "as-test",
                "MODAL_CONFIG_PATH": str(base / "absent.toml"), "PYTHONUNBUFFERED": "1"})
    proc = subprocess.run([sys.executable, "-m", "tests.modal_rounds_driver", str(base), server, str(config)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=840)
    assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr[-6000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    seen["stderr"] = proc.stderr
    return seen


@pytest.fixture(scope="module")
def modal_rounds(tmp_path_factory):
    from testserver import start_server

    base = tmp_path_factory.mktemp("modal-rounds")
    config = yaml.safe_load((ROOT / "configs" / "modal.yaml").read_text())
    with start_server(models=["gpt-5", "seinfeld"], model_markers={"seinfeld-dpo": "PREFER-ME"}) as server:
        config.update({
            "prompts": str(ROOT / "data" / "local" / "scenes.jsonl"), "limit": 4, "holdout_fraction": 0.05,
            "workdir": str(base / "work"),
            "generate": {**config["generate"], "max_tokens": 64, "concurrency": 8},
            "judge": {**config["judge"], "judge_url": server.url, "judge_model": "gpt-5", "concurrency": 8},
            "deploy": {"state_dir": str(base / "serving"), "timeout_s": 60},
            "evaluate": {**(config.get("evaluate") or {}), "min_win_rate": 0.5},
            "rounds": {"count": 2, "prompts": "fresh", "data": "round"},
        })
        path = base / "modal-rounds.yaml"
        path.write_text(yaml.safe_dump(config))
        first = _driver(base, server.root_url, path)
        rerun = _driver(base, server.root_url, path)
        yield {"base": base, "first": first, "rerun": rerun}


def test_both_rounds_run_on_the_modal_profile_and_pass_their_gate(modal_rounds):
    first = modal_rounds["first"]
    assert first["rc"] == 0, first["stderr"][-4000:]
    folder = next((modal_rounds["base"] / "work" / "rounds").iterdir())
    records = [json.loads((folder / f"round-{k}.json").read_text()) for k in (1, 2)]
    assert [r["status"] for r in records] == ["done", "done"]
    assert all(r["vs_sft"]["complete"] and r["vs_sft"]["passed"] for r in records)
    assert records[1]["vs_previous"]["win_rate_all"] > 0.5  # the marked seinfeld-dpo beats seinfeld-dpo-prev


def test_round_two_trains_on_from_round_one_and_serves_it_beside_as_prev(modal_rounds):
    first = modal_rounds["first"]
    trains, deploys = first["trains"], first["deploys"]
    assert len(trains) == 2 and "init_adapter" not in trains[0]["overrides"]
    round1 = deploys[0]["seinfeld-dpo"]
    assert trains[1]["overrides"]["init_adapter"] == round1  # the policy starts from round 1's adapter
    assert deploys[0] == {"seinfeld": SFT_FOLDER, "seinfeld-dpo": round1}
    assert deploys[-1]["seinfeld-dpo-prev"] == round1 and deploys[-1]["seinfeld"] == SFT_FOLDER
    assert deploys[-1]["seinfeld-dpo"] != round1 and len(deploys[-1]) == 3
    assert first["rollbacks"] == []


def test_each_sampling_raises_the_replica_bound_and_each_deploy_carries_the_configured_scale(modal_rounds):
    """The config's deploy.scale reaches `modal deploy` whole, and both rounds' sampling asked Modal for
    sample_max_containers replicas (round 2 samples round 1's adapter from the serving app)."""
    first = modal_rounds["first"]
    scale = yaml.safe_load((ROOT / "configs" / "modal.yaml").read_text())["deploy"]["scale"]
    assert first["scales"] and all(s == scale for s in first["scales"])
    assert first["sampling_bounds"] == [scale["sample_max_containers"]] * 2


def test_the_rerun_trusts_the_records_whose_folders_are_on_the_volume_and_runs_nothing(modal_rounds):
    rerun = modal_rounds["rerun"]
    assert rerun["rc"] == 0 and rerun["trains"] == [] and rerun["deploys"] == [] and rerun["uploads"] == []
    assert "finished before" in rerun["stderr"]


def test_the_serving_app_batches_every_adapter_it_serves(tmp_path):
    from serving.modal_app import SETTINGS
    from serving.vllm_cmd import build_vllm_command

    three = {}
    for name in ("seinfeld", "seinfeld-dpo", "seinfeld-dpo-prev"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 16, "lora_alpha": 32,
                                                                "target_modules": ["q_proj", "v_proj"]}))
        (folder / "adapter_model.safetensors").write_bytes(b"w")
        three[name] = str(folder)
    cmd = build_vllm_command(SETTINGS, three)
    assert cmd[cmd.index("--max-loras") + 1] == "3"
    two = build_vllm_command(SETTINGS, dict(list(three.items())[:2]))
    assert two[two.index("--max-loras") + 1] == "2"


def test_the_sft_baseline_is_sampled_once_and_shared_by_both_rounds_ab(modal_rounds):
    base = modal_rounds["base"]
    folder = next((base / "work" / "rounds").iterdir())
    records = [json.loads((folder / f"round-{k}.json").read_text()) for k in (1, 2)]
    shared = sorted(p for p in (base / "work" / "evaluate-samples").iterdir() if p.is_dir())
    # one for SFT (both rounds' A/B over it), one for round 1's adapter (round 2's A/B over it): not one per A/B
    assert len(shared) == 2, shared
    rows = [sum(1 for line in (p / "completions.jsonl").read_text().splitlines() if line.strip()) for p in shared]
    assert sorted(rows) == [records[0]["vs_sft"]["n"]] * 2  # each held-out prompt sampled once per baseline
    assert not list((base / "work" / "evaluate").glob("*/samples/seinfeld"))
