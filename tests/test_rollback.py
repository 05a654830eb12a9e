"""A failed A/B gate puts the previous DPO adapter back: what each target redeploys (the deploy itself is faked
at its boundary here; tests/test_serving_local.py runs deploy_local for real)."""

from __future__ import annotations

import json
import subprocess

import pytest

import serving.rollback as rollback
from serving.errors import DeployError
from serving.records import AdapterRecord, DeployRecord


def record(adapters: dict[str, str]) -> DeployRecord:
    return DeployRecord(target="local", url="http://127.0.0.1:1", base_url="http://127.0.0.1:1/v1", base_model="b",
                        models=sorted(adapters), ready_seconds=1.0, deployed_at="t",
                        adapters=[AdapterRecord(name=n, path=p, parent="b", sha256=None) for n, p in adapters.items()])


@pytest.fixture
def deployed(monkeypatch):
    calls: list[dict] = []
    monkeypatch.setattr(rollback, "deploy_local", lambda base, adapters, state_dir, **_: calls.append(
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


def test_modal_rollback_names_the_version_to_go_back_to(monkeypatch):
    """Issue 27.1: never `modal app rollback APP` alone (one back from the newest, which a rollback itself is)."""
    import serving.modal_deploy as deploy

    seen = []

    def fake_run(cmd, **kwargs):
        seen.append(cmd[1:])
        return subprocess.CompletedProcess(cmd, 0 if len(seen) == 1 else 1)

    monkeypatch.setattr(deploy.subprocess, "run", fake_run)
    deploy.rollback_modal_app("nothing-gpt-serve", 3)
    assert seen == [["-m", "modal", "app", "rollback", "nothing-gpt-serve", "v3"]]  # as modal 1.6.4's CLI takes it
    with pytest.raises(DeployError, match="exited 1"):
        deploy.rollback_modal_app("nothing-gpt-serve", 3)


def modal_record(dpo: str, *, deployed_at: str, version: int | None, previous: int | None) -> DeployRecord:
    return DeployRecord(target="modal", url="https://x.modal.run", base_url="https://x.modal.run/v1", base_model="b",
                        models=["b", "seinfeld", "seinfeld-dpo"], ready_seconds=1.0, deployed_at=deployed_at,
                        app_name="nothing-gpt-serve", app_version=version, previous_app_version=previous,
                        adapters=[AdapterRecord(name="seinfeld", path="/vol/adapters/nothing-gpt/s", parent="b",
                                                sha256=None),
                                  AdapterRecord(name="seinfeld-dpo", path=dpo, parent="b", sha256=None)])


class FakeModalCli:
    """`python -m modal app history|rollback` as Modal answers them: every rollback adds a version that serves
    what the version it names served."""

    def __init__(self, served: dict[int, str]):
        self.served = dict(served)  # version -> the DPO folder it serves
        self.calls: list[list[str]] = []

    def run(self, cmd, **kwargs):
        args = cmd[3:]  # after [python, -m, modal]
        self.calls.append(args)
        if args[:2] == ["app", "history"]:
            rows = [{"version": f"v{v}", "time_deployed": "t", "client": "1.6.4"} for v in sorted(self.served)[::-1]]
            return subprocess.CompletedProcess(cmd, 0, stdout=json.dumps(rows, indent=2), stderr="")
        if args[:2] == ["app", "rollback"]:
            target = int(args[3].removeprefix("v")) if len(args) > 3 else max(self.served) - 1
            self.served[max(self.served) + 1] = self.served[target]
            return subprocess.CompletedProcess(cmd, 0)
        raise AssertionError(f"unexpected command {args}")

    def live(self) -> str:
        return self.served[max(self.served)]


def test_a_failed_gate_on_modal_restores_the_version_live_before_and_the_records_follow(tmp_path, monkeypatch):
    """Issue 27.1: after the rollback the deployment record and the deploy stamp say what is live (a rerun deploys
    again instead of taking the rejected deploy from ZenML's cache), and a second rollback changes nothing."""
    import serving.modal_deploy as deploy
    from infra.atomic import write_json
    from serving.records import load_record, record_path
    from steps.place_tokens import deploy_token, stamp_deploy
    from targets import open_target
    from targets.spec import Operations, TargetSpec

    spec = TargetSpec(profile="modal", model_key="m", workdir=str(tmp_path), state_dir=str(tmp_path))

    modal = FakeModalCli({3: "/vol/adapters/nothing-gpt-dpo/good", 4: "/vol/adapters/nothing-gpt-dpo/rejected"})
    monkeypatch.setattr(deploy.subprocess, "run", modal.run)
    good = modal_record("/vol/adapters/nothing-gpt-dpo/good", deployed_at="2026-12-01T00:00:00+00:00",
                        version=3, previous=2)
    rejected = modal_record("/vol/adapters/nothing-gpt-dpo/rejected", deployed_at="2026-12-02T00:00:00+00:00",
                            version=4, previous=3)
    rollback.save_previous(tmp_path, good)  # as steps/deploy.py keeps the record a deploy replaces
    write_json(record_path(tmp_path, "modal"), rejected.to_dict())
    stamp_deploy(tmp_path, "modal", "token-of-the-rejected-deploy")
    assert deploy_token(spec) == "token-of-the-rejected-deploy"

    said = open_target(spec).rollback(rejected, Operations())

    assert modal.calls[0] == ["app", "rollback", "nothing-gpt-serve", "v3"] and modal.live().endswith("/good")
    live = load_record(tmp_path, "modal")
    assert {a.name: a.path for a in live.adapters}["seinfeld-dpo"] == "/vol/adapters/nothing-gpt-dpo/good"
    assert live.app_version == 5 and live.previous_app_version is None and "good" in said
    assert deploy_token(spec) != "token-of-the-rejected-deploy"  # the rerun's deploy step runs

    open_target(spec).rollback(rejected, Operations())  # e.g. the evaluate step retried: harmless
    assert modal.live().endswith("/good") and load_record(tmp_path, "modal") == live
    assert [c for c in modal.calls if c[1] == "rollback"] == [["app", "rollback", "nothing-gpt-serve", "v3"]]


def test_a_modal_rollback_without_a_record_of_what_comes_back_removes_the_record(tmp_path, monkeypatch):
    import serving.modal_deploy as deploy
    from infra.atomic import write_json
    from serving.records import load_record, record_path

    modal = FakeModalCli({3: "/vol/adapters/nothing-gpt-dpo/good", 4: "/vol/adapters/nothing-gpt-dpo/rejected"})
    monkeypatch.setattr(deploy.subprocess, "run", modal.run)
    rejected = modal_record("/vol/adapters/nothing-gpt-dpo/rejected", deployed_at="t2", version=4, previous=3)
    write_json(record_path(tmp_path, "modal"), rejected.to_dict())  # deployed elsewhere before: no previous record
    assert rollback.rollback_modal(tmp_path, rejected) is None
    assert modal.live().endswith("/good") and load_record(tmp_path, "modal") is None  # never the rejected one


def test_a_rejected_first_version_is_redeployed_with_the_sft_adapter_alone(tmp_path, monkeypatch):
    from infra.atomic import write_json
    from serving.records import record_path

    rejected = modal_record("/vol/adapters/nothing-gpt-dpo/rejected", deployed_at="t1", version=1, previous=None)
    write_json(record_path(tmp_path, "modal"), rejected.to_dict())
    redeployed = []
    monkeypatch.setattr(rollback, "deploy_modal", lambda **kw: redeployed.append(kw) or "record")
    assert rollback.rollback_modal(tmp_path, rejected) == "record"
    assert redeployed == [{"adapters": {"seinfeld-dpo": ""}, "state_dir": tmp_path}]  # "" = not served
