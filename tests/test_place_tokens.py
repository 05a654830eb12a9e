"""The cache tokens of the upload and deploy steps: the step's last token while what it made is still in
place (so a run with nothing changed is served from ZenML's cache), a fresh one as soon as it is not."""

from __future__ import annotations

from pathlib import Path

from infra.atomic import write_json
from serving.adapters import hash_adapter_dir
from serving.records import AdapterRecord, DeployRecord, record_path
from steps.place_tokens import deploy_token, stamp_deploy, stamp_upload, upload_token
from targets.spec import TargetSpec
from training.config import TRAIN_FILE, VAL_FILE


def spec(profile: str, *, work: Path | None = None, state: Path | None = None) -> TargetSpec:
    return TargetSpec(profile=profile, model_key="m", workdir=str(work or "/nowhere"),
                      state_dir=str(state or "/nowhere"))


def _record(state_dir: Path, target: str, deployed_at: str, adapters: list[AdapterRecord] | None = None) -> None:
    rec = DeployRecord(target=target, url="http://127.0.0.1:9", base_url="http://127.0.0.1:9/v1", base_model="b",
                       models=["seinfeld"], adapters=adapters or [], ready_seconds=1.0, deployed_at=deployed_at)
    write_json(record_path(state_dir, target), rec.to_dict())


def test_upload_token_is_kept_while_every_uploaded_folder_holds_both_files(tmp_path):
    work = tmp_path / "work"
    first, second = upload_token(spec("local", work=work)), upload_token(spec("local", work=work))
    assert first != second  # nothing recorded: a new key each launch, so the step runs
    folders = [tmp_path / "vol" / name for name in ("a", "b")]
    for folder in folders:
        folder.mkdir(parents=True)
        (folder / TRAIN_FILE).write_text("{}\n")
        (folder / VAL_FILE).write_text("{}\n")
        stamp_upload(work, "local", first, str(folder))
    assert upload_token(spec("local", work=work)) == first  # in place: the cached key
    assert upload_token(spec("modal", work=work)) != first  # another target is another place
    (folders[0] / VAL_FILE).unlink()  # one uploaded folder lost a file: upload again
    assert upload_token(spec("local", work=work)) != first


def test_deploy_token_follows_the_stamped_deployment_only(tmp_path):
    state = tmp_path / "serving"
    modal = spec("modal", state=state)
    assert deploy_token(modal) != deploy_token(modal)  # nothing deployed yet
    _record(state, "modal", "2026-12-01T10:00:00")
    assert deploy_token(modal) != deploy_token(modal)  # a record no step stamped (manual)
    stamp_deploy(state, "modal", "tok-1")
    assert deploy_token(modal) == "tok-1"  # the modal deployment persists: trusted, no request
    _record(state, "modal", "2026-12-01T11:00:00")  # a rollback or a manual deploy replaced it
    assert deploy_token(modal) != "tok-1"
    record_path(state, "modal").unlink()  # `deploy --stop`
    assert deploy_token(modal) != "tok-1"


def test_local_deploy_token_needs_the_server_to_answer(tmp_path, monkeypatch):
    import targets.local

    monkeypatch.setattr(targets.local, "LIVE_CHECK_TIMEOUT_S", 1.0)
    state = tmp_path / "serving"
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    _record(state, "local", "2026-12-01T10:00:00",
            [AdapterRecord("seinfeld", str(adapter), None, hash_adapter_dir(adapter))])
    write_json(state / "local_server.json", {"pid": 1, "url": "http://127.0.0.1:9", "port": 9, "api_key": "k"},
               private=True)
    stamp_deploy(state, "local", "tok-1")
    assert deploy_token(spec("local", state=state)) != "tok-1"  # stamped, but nothing answers on port 9
