"""The Modal side without the service: app spec, content-addressed upload, and fast credential errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from infra.names import NAMES
from training import upload
from training.modal_auth import ModalCredentialsError, has_modal_credentials, modal_auth_errors
from training.tiny import write_sample_preferences

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def no_modal_credentials(tmp_path, monkeypatch) -> Path:
    """No token anywhere: env unset, HOME without ~/.modal.toml."""
    for name in ("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET", "MODAL_CONFIG_PATH", "MODAL_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


@pytest.fixture
def split(tmp_path) -> tuple[Path, Path]:
    data = write_sample_preferences(tmp_path / "split")
    return data / "train.jsonl", data / "val.jsonl"


def test_app_imports_without_credentials_and_asks_for_an_l4(no_modal_credentials):
    from training import modal_app

    spec = modal_app.train._spec_
    assert spec.gpus == NAMES.gpu == "L4"
    assert set(spec.volumes) == {NAMES.mount, modal_app.HF_CACHE}
    assert modal_app.app.name == NAMES.train_app
    assert len(spec.secrets) == 2


def test_training_without_wandb_mounts_only_the_hf_secret(no_modal_credentials):
    code = (
        "from training import modal_app\n"
        "print(len(modal_app.train._spec_.secrets))\n"
    )
    env = {**os.environ, "NGPT_WANDB_SECRET": ""}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"


def test_dataset_hash_is_content_addressed(split, tmp_path):
    train, val = split
    digest = upload.dataset_hash(train, val)
    assert len(digest) == upload.HASH_CHARS
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    (moved / "a.jsonl").write_bytes(train.read_bytes())
    (moved / "b.jsonl").write_bytes(val.read_bytes())
    assert upload.dataset_hash(moved / "a.jsonl", moved / "b.jsonl") == digest  # names do not matter
    assert upload.dataset_hash(val, train) != digest  # roles do
    (moved / "b.jsonl").write_text(val.read_text() + "\n")
    assert upload.dataset_hash(moved / "a.jsonl", moved / "b.jsonl") != digest  # content does


def test_volume_paths():
    assert upload.volume_data_dir("abc") == "/data/dpo/abc"
    assert upload.container_path("/data/dpo/abc") == "/vol/data/dpo/abc"
    assert upload.container_path("/vol/data/dpo/abc") == "/vol/data/dpo/abc"
    assert upload.container_path("data/dpo/abc") == "/vol/data/dpo/abc"


def test_upload_skips_files_already_there(split):
    train, val = split
    remote = "/data/dpo/x"
    sizes = {"train.jsonl": train.stat().st_size, "val.jsonl": val.stat().st_size}
    assert upload.files_to_upload(train, val, remote, {}) == [
        (train, "/data/dpo/x/train.jsonl"), (val, "/data/dpo/x/val.jsonl")
    ]
    assert upload.files_to_upload(train, val, remote, sizes) == []
    assert upload.files_to_upload(train, val, remote, {"train.jsonl": sizes["train.jsonl"]}) == [
        (val, "/data/dpo/x/val.jsonl")
    ]
    partial = {**sizes, "val.jsonl": 3}  # an interrupted earlier upload
    assert upload.files_to_upload(train, val, remote, partial) == [(val, "/data/dpo/x/val.jsonl")]


def test_credentials_from_env_or_config_file(no_modal_credentials, monkeypatch):
    assert not has_modal_credentials()
    (no_modal_credentials / ".modal.toml").write_text('[default]\ntoken_id = "ak-1"\ntoken_secret = "as-1"\n')
    assert has_modal_credentials()
    (no_modal_credentials / ".modal.toml").unlink()
    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-1")
    assert not has_modal_credentials()  # half a pair is no token
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-1")
    assert has_modal_credentials()


def test_upload_without_credentials_fails_fast(no_modal_credentials, split, monkeypatch):
    import modal

    monkeypatch.setattr(modal.Volume, "from_name", lambda *a, **k: pytest.fail("called Modal"))
    with pytest.raises(ModalCredentialsError, match="modal token new"):
        upload.upload_dataset(*split)


def test_train_remote_without_credentials_fails_fast(no_modal_credentials):
    from training.remote import train_remote

    with pytest.raises(ModalCredentialsError, match="modal token new"):
        train_remote("/data/dpo/abc", {"max_steps": 3, "sft_adapter": "/vol/adapters/nothing-gpt/abc"})


def test_train_remote_rejects_bad_overrides_before_anything(no_modal_credentials):
    from training.config import ConfigError
    from training.remote import train_remote

    with pytest.raises(ConfigError, match="unknown DPOTrainConfig setting"):
        train_remote("/data/dpo/abc", {"max_step": 3})


def test_auth_error_from_modal_is_rewritten():
    import modal.exception

    with pytest.raises(ModalCredentialsError, match="modal token new"), modal_auth_errors():
        raise modal.exception.AuthError("Token missing")


def test_real_modal_call_without_token_fails_fast_with_the_fix(tmp_path, split):
    """Past our own check (patched away), Modal's AuthError surfaces at once as ModalCredentialsError."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")}
    env.update(HOME=str(tmp_path), PYTHONPATH=str(REPO))
    code = (
        "import sys, training.upload as u\n"
        "from training.modal_auth import ModalCredentialsError\n"
        "u.require_modal_credentials = lambda: None\n"
        "try:\n"
        "    u.upload_dataset(*map(__import__('pathlib').Path, sys.argv[1:]))\n"
        "except ModalCredentialsError as e:\n"
        "    print('FIX:', e)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *map(str, split)],
        env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert "FIX:" in proc.stdout and "modal token new" in proc.stdout, proc.stderr[-2000:]


def test_cli_registers_upload_and_train():
    import argparse

    from training import cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "--data", "/data/dpo/x", "--remote", "--max-steps", "5",
                              "--set", "beta=0.2", "--set", "run_name=try"])
    assert cli.overrides_from_args(args) == {"max_steps": 5, "beta": 0.2, "run_name": "try"}
    args = parser.parse_args(["upload", "--train", "t.jsonl", "--val", "v.jsonl"])
    assert args.func is cli._upload


def test_cli_train_remote_without_credentials_exits_2(no_modal_credentials, capsys):
    import argparse

    from training import cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "--data", "/data/dpo/x", "--remote", "--sft-adapter", "/vol/adapters/a/1"])
    assert args.func(args) == 2
    assert "modal token new" in capsys.readouterr().err


def test_bench_runs_tiny_on_cpu(tmp_path):
    """The GPU bench is importable and its --tiny --cpu smoke mode runs the real training path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("dpo_gpu_bench", REPO / "bench" / "dpo_gpu_bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    argv = ["--tiny", "--cpu", "--steps", "1", "--batch", "2", "--max-length", "96", "--json", str(out)]
    assert bench.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["tokens_per_second"] > 0 and result["device"] == "cpu" and result["max_length"] == 96
    assert result["peak_gpu_memory_gib"] is None and result["timed_steps"] == 1
