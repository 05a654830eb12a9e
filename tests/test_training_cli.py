"""`train` prints the result JSON alone on stdout (so `train ... | jq` works); everything else goes to stderr."""

from __future__ import annotations

import json
import subprocess

import pytest

import training.tiny as tiny
from pipelines.dpo import main
from tests.helpers import ROOT, cli, env
from training.tiny import write_sample_preferences


def _args(tmp_path) -> list[str]:
    data = write_sample_preferences(tmp_path / "data")
    return [
        "train",
        "--tiny",
        "--data",
        str(data),
        "--max-steps",
        "1",
        "--output-dir",
        str(tmp_path / "ckpt"),
        "--adapter-out",
        str(tmp_path / "adapter"),
    ]


@pytest.mark.e2e  # a whole training run through the CLI (~30 s): in `make slow`, beside the rounds chain
def test_train_cli_stdout_is_only_the_result_json(tiny_kit, tmp_path):
    done = subprocess.run(cli(*_args(tmp_path)), cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)  # nothing else on stdout: not a log line, not a metrics dict
    assert result["steps"] == 1 and result["adapter_dir"].startswith(str(tmp_path / "adapter"))
    assert "step 1" in done.stderr  # the progress went to stderr


def test_what_a_tiny_kit_build_prints_goes_to_stderr(tiny_kit, tmp_path, monkeypatch, capsys):
    def building(*args, **kwargs):
        print("{'loss': 0.69, 'epoch': 1.0}")  # what transformers prints while a kit build trains its adapters
        return tiny_kit

    monkeypatch.setattr(tiny, "ensure_tiny_kit", building)
    assert main(_args(tmp_path)) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["steps"] == 1
    assert "{'loss': 0.69" in err
