"""A failed A/B gate puts the previous DPO adapter back: what each target redeploys (the deploy itself is faked
at its boundary here; tests/test_serving_local.py runs deploy_local for real)."""

from __future__ import annotations

import subprocess

import pytest

import serving.rollback as rollback
from serving.deploy import AdapterRecord, DeployRecord
from serving.errors import DeployError


def record(adapters: dict[str, str]) -> DeployRecord:
    return DeployRecord(target="local", url="http://127.0.0.1:1", base_url="http://127.0.0.1:1/v1", base_model="b",
                        models=sorted(adapters), ready_seconds=1.0, deployed_at="t",
                        adapters=[AdapterRecord(name=n, path=p, parent="b", sha256=None) for n, p in adapters.items()])


@pytest.fixture
def deployed(monkeypatch):
    calls: list[dict] = []
    monkeypatch.setattr(rollback, "deploy_local", lambda base, adapters, state_dir: calls.append(
        {k: str(v) for k, v in adapters.items()}) or record({}))
    return calls


def test_local_rollback_serves_the_previous_deploys_adapters(tmp_path, deployed):
    sft, old_dpo = tmp_path / "sft", tmp_path / "dpo-old"
    sft.mkdir()
    old_dpo.mkdir()
    rollback.save_previous(tmp_path, record({"seinfeld": str(sft), "seinfeld-dpo": str(old_dpo)}))
    rollback.rollback_local(tmp_path, tmp_path / "base", {"seinfeld": sft})
    assert deployed == [{"seinfeld": str(sft), "seinfeld-dpo": str(old_dpo)}]


def test_local_rollback_without_an_earlier_dpo_adapter_serves_the_sft_one_alone(tmp_path, deployed):
    sft = tmp_path / "sft"
    sft.mkdir()
    rollback.rollback_local(tmp_path, tmp_path / "base", {"seinfeld": sft})  # no previous record at all
    rollback.save_previous(tmp_path, record({"seinfeld": str(sft), "seinfeld-dpo": str(tmp_path / "gone")}))
    rollback.rollback_local(tmp_path, tmp_path / "base", {"seinfeld": sft})  # its DPO folder no longer exists
    assert deployed == [{"seinfeld": str(sft)}] * 2


def test_modal_rollback_runs_modal_app_rollback(monkeypatch):
    import serving.deploy as deploy

    seen = []

    def fake_run(cmd, **kwargs):
        seen.append(cmd[1:])
        return subprocess.CompletedProcess(cmd, 0 if len(seen) == 1 else 1)

    monkeypatch.setattr(deploy.subprocess, "run", fake_run)
    rollback.rollback_modal("nothing-gpt-serve")
    assert seen == [["-m", "modal", "app", "rollback", "nothing-gpt-serve"]]
    with pytest.raises(DeployError, match="exited 1"):
        rollback.rollback_modal("nothing-gpt-serve")
