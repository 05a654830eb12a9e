"""Bad settings and input end in exit 2 and a message naming the key or the file:line, never a traceback (issue 27).

Most cases go through the CLI's `main()` in this process (what `python -m pipelines.dpo` runs, without the
start-up cost); one goes through a real process to show the exit code and stderr a user sees.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

import pipelines.config as config_module
from pipelines.config import load_config
from pipelines.dpo import main
from tests.helpers import ROOT, cli, env
from training.cli import parse_settings
from training.config import ConfigError, DPOTrainConfig

SAMPLE_PROMPTS = ROOT / "data" / "sample" / "prompts.jsonl"


def _config(tmp_path: Path, **changes) -> Path:
    """configs/tiny.yaml with `section__key=value` (or top-level `key=value`) changed."""
    data = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            data.setdefault(section, {})[name] = value
        else:
            data[key] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _exit_2(capsys, argv: list[str]) -> str:
    """Run the CLI; it must end with exit 2 and no traceback. Returns its stderr (and stdout)."""
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert "Traceback" not in err and err.startswith("error: "), err
    return err + out


@pytest.mark.parametrize(("change", "named"), [
    ({"prompts": 42}, "prompts must be a path"),
    ({"workdir": 5}, "workdir must be a path"),
    ({"train__learning_rate": "fast"}, "train.learning_rate must be a number, got 'fast'"),
    ({"generate__n": "three"}, "generate.n must be a whole number, got 'three'"),
    ({"split__val_fraction": "half"}, "split.val_fraction must be a number, got 'half'"),
    ({"evaluate__max_cost_usd": "lots"}, "evaluate.max_cost_usd must be a number or null, got 'lots'"),
])
def test_a_value_of_the_wrong_kind_names_its_key(tmp_path, capsys, change, named):
    err = _exit_2(capsys, ["run", "--config", str(_config(tmp_path, **change)), "--estimate"])
    assert named in err


def test_a_float_yaml_reads_as_text_gets_the_spelling_that_works(tmp_path, capsys):
    path = _config(tmp_path)
    path.write_text(path.read_text().replace("train:\n", "train:\n  learning_rate: 1e-5\n"))  # YAML 1.1: a string
    err = _exit_2(capsys, ["run", "--config", str(path), "--estimate"])
    assert "train.learning_rate must be a number, got '1e-5'" in err and "write 1.0e-05" in err


def test_a_config_file_that_is_not_utf8_names_the_file_and_line(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"profile: local\n# caf\xe9 scenes\nlimit: 3\n")  # saved as Latin-1 by an editor
    err = _exit_2(capsys, ["run", "--config", str(path), "--estimate"])
    assert f"{path}:2: not UTF-8" in err


def test_a_malformed_prompt_line_under_estimate_names_the_file_and_line(tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    good = SAMPLE_PROMPTS.read_bytes().splitlines(keepends=True)[:3]
    prompts.write_bytes(b"".join(good) + b'{"prompt": \n' + b'{"completion": "no prompt"}\n')
    err = _exit_2(capsys, ["run", "--config", str(_config(tmp_path, prompts=str(prompts))), "--estimate"])
    assert f"{prompts}:4: invalid JSON" in err and f'{prompts}:5: missing "prompt"' in err


def test_split_given_a_folder_says_so(tmp_path, capsys):
    err = _exit_2(capsys, ["split", "--preferences", str(tmp_path), "--out", str(tmp_path / "split")])
    assert f"--preferences {tmp_path} is a folder" in err
    assert not (tmp_path / "split").exists()


def test_train_set_with_text_for_a_number_names_the_key(tmp_path, capsys):
    err = _exit_2(capsys, ["train", "--data", str(tmp_path), "--set", "learning_rate=fast"])
    assert "learning_rate must be a number, got 'fast'" in err


def test_dpo_config_checks_the_kind_of_every_setting():
    with pytest.raises(ConfigError, match=r"^max_steps must be a whole number, got 2\.5"):
        DPOTrainConfig(max_steps=2.5)
    with pytest.raises(ConfigError, match=r"^bf16 must be true or false, got 'yes'.*e\.g\. true"):
        DPOTrainConfig(bf16="yes")
    assert DPOTrainConfig(beta=1, data_dir=Path("/data"), run_name=None).beta == 1  # an int is a number; a path text
    assert parse_settings(["restart=20261205", "beta=0.2"]) == {"restart": "20261205", "beta": 0.2}  # a label: text


def test_estimate_names_each_invalid_line_as_the_judge_does(tmp_path, capsys):
    path = tmp_path / "completions.jsonl"
    path.write_text('{"prompt": "a", "completions": ["x", "y"]}\nnot json\n{"prompt": "b"}\n')
    assert main(["estimate", "--completions", str(path), "--backend", "reference"]) == 0
    out = capsys.readouterr().out
    assert "2 invalid line(s)" in out
    assert f"{path}:2: invalid JSON" in out and f'{path}:3: missing "completions"' in out


def test_the_modal_profile_samples_the_sft_validation_split():
    assert yaml.safe_load((ROOT / "configs" / "modal.yaml").read_text())["prompts"] == "data/training/val.jsonl"
    cfg = load_config(profile="modal", env={})  # loads whether or not the split is copied in: an input, not a setting
    assert cfg.prompts == ROOT / "data" / "training" / "val.jsonl"
    assert "/data/training/val.jsonl" in (ROOT / ".gitignore").read_text().splitlines()  # never committed


@pytest.fixture
def no_val_split(tmp_path, monkeypatch):
    """The repository as a fresh clone has it: no data/training/val.jsonl (the root moved to an empty folder)."""
    missing = tmp_path / "data" / "training" / "val.jsonl"
    origin = config_module.PROMPT_ORIGINS[ROOT / "data" / "training" / "val.jsonl"]
    monkeypatch.setattr(config_module, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(config_module, "PROMPT_ORIGINS", {missing: origin})
    return missing


def test_the_modal_estimate_without_the_split_says_where_it_comes_from(no_val_split, capsys):
    err = _exit_2(capsys, ["run", "--profile", "modal", "--estimate"])
    assert f"{no_val_split} does not exist" in err
    assert "SFT project's validation split" in err and "copy that val.jsonl to data/training/val.jsonl" in err


def test_the_modal_preflight_lists_the_missing_split_with_the_credentials(no_val_split, tmp_path, monkeypatch,
                                                                          capsys):
    for name in ("SERVE_URL", "SERVE_API_KEY", "OPENAI_API_KEY", "MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET",
                 "MODAL_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(tmp_path / "no-modal.toml"))
    err = _exit_2(capsys, ["run", "--profile", "modal"])
    assert "nothing was run or paid for" in err
    assert f"prompts: {no_val_split} does not exist" in err and "OPENAI_API_KEY is not set" in err


def test_a_user_sees_exit_2_and_the_message_not_a_traceback(tmp_path):
    done = subprocess.run(cli("run", "--config", str(_config(tmp_path, generate__n="three")), "--estimate"),
                          cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "generate.n must be a whole number" in done.stderr
