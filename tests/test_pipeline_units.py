"""Fast checks of the pipeline layer without ZenML: configuration, the modal preflight, checkpoint folders."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from engine.summary import Counters, StageSummary
from pipelines.config import LOCAL_SERVE_URL, PipelineConfigError, load_config
from pipelines.preflight import offline_problems
from steps.records import JsonlFile
from steps.stage_io import StageIncomplete, fail_if_incomplete, stage_dir, stage_key, summary_metadata

ROOT = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path, **changes) -> Path:
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


def test_shipped_configs_load_and_validate():
    local = load_config(env={})
    assert local.profile == "local" and local.judge.backend == "reference"
    assert local.generate.serve_url == LOCAL_SERVE_URL  # the step serves the tiny kit itself
    assert local.workdir == ROOT / "data" / "dpo" / "local"
    assert local.local_model == "smollm2" and local.holdout_fraction == 0.4  # the real model, a hold-out A/B
    assert local.rounds.count == 1 and local.rounds.prompts == "all"  # `run` is one round; --rounds K more
    assert local.evaluate.min_win_rate == 0.4  # the gate is on locally
    tiny = load_config(config_file=ROOT / "configs" / "tiny.yaml", env={})
    assert tiny.local_model == "tiny" and tiny.holdout_fraction == 0 and tiny.evaluate.min_win_rate is None
    modal = load_config(profile="modal", env={"SERVE_URL": "https://example.modal.run/v1"})
    assert modal.judge.backend == "openai" and modal.generate.serve_url == "https://example.modal.run/v1"
    assert modal.judge_run.concurrency == 32 and modal.judge.max_cost_usd == 50


def test_unknown_keys_are_rejected_with_the_valid_ones(tmp_path):
    with pytest.raises(PipelineConfigError, match=r"unknown key\(s\) 'tempreature'.*valid keys: .*temperature"):
        load_config(config_file=_config(tmp_path, generate__tempreature=1.0), env={})
    with pytest.raises(PipelineConfigError, match=r"'epochs'.*valid keys: .*enable_cache"):
        load_config(config_file=_config(tmp_path, epochs=3), env={})
    with pytest.raises(PipelineConfigError, match=r"'learnig_rate'.*learning_rate"):
        load_config(config_file=_config(tmp_path, train__learnig_rate=0.1), env={})


def test_values_are_validated_by_the_dataclass_that_owns_them(tmp_path):
    with pytest.raises(PipelineConfigError, match=r"^generate: .*temperature must be in \[0, 2\], got 5"):
        load_config(config_file=_config(tmp_path, generate__temperature=5), env={})
    with pytest.raises(PipelineConfigError, match=r"^judge: concurrency must be >= 1"):
        load_config(config_file=_config(tmp_path, judge__concurrency=0), env={})
    with pytest.raises(PipelineConfigError, match=r"^train: .*beta must be > 0"):
        load_config(config_file=_config(tmp_path, train__beta=-1), env={})
    with pytest.raises(PipelineConfigError, match=r"val_fraction must be between 0 and 1"):
        load_config(config_file=_config(tmp_path, split__val_fraction=1.5), env={})
    with pytest.raises(PipelineConfigError, match=r"holdout_fraction must be a number in \[0, 1\), got 1"):
        load_config(config_file=_config(tmp_path, holdout_fraction=1), env={})
    with pytest.raises(PipelineConfigError, match=r"local_model must be one of smollm2, tiny, got 'big'"):
        load_config(config_file=_config(tmp_path, local_model="big"), env={})


def test_keys_the_pipeline_sets_cannot_be_configured(tmp_path):
    with pytest.raises(PipelineConfigError, match=r"judge.limit is set by the pipeline.*--limit"):
        load_config(config_file=_config(tmp_path, judge__limit=3), env={})
    with pytest.raises(PipelineConfigError, match=r"train.base_model is set by the pipeline from the local kit"):
        load_config(config_file=_config(tmp_path, train__base_model="x"), env={})


def test_flags_override_the_file_and_env_overrides_endpoints(tmp_path):
    path = _config(tmp_path, limit=3, profile="modal", judge__backend="openai")
    cfg = load_config(config_file=path, limit=5, workdir=tmp_path / "w", no_cache=True,
                      env={"SERVE_URL": "https://a/v1", "JUDGE_MODEL": "gpt-5-mini", "OPENAI_BASE_URL": "https://j/v1"})
    assert (cfg.limit, cfg.workdir, cfg.enable_cache) == (5, tmp_path / "w", False)
    assert cfg.generate.serve_url == "https://a/v1"
    assert (cfg.judge.judge_model, cfg.judge.judge_url) == ("gpt-5-mini", "https://j/v1")
    with pytest.raises(PipelineConfigError, match="--profile local contradicts `profile: modal`"):
        load_config(profile="local", config_file=path, env={})


def test_local_profile_never_calls_openai(tmp_path):
    with pytest.raises(PipelineConfigError, match="local profile never calls api.openai.com"):
        load_config(config_file=_config(tmp_path, judge__backend="openai"), env={})
    cfg = load_config(config_file=_config(tmp_path, judge__backend="openai", judge__judge_url="http://127.0.0.1:9/v1"),
                      env={})
    assert cfg.judge.backend == "openai"  # a local OpenAI-compatible judge is allowed


def test_modal_preflight_lists_every_missing_credential(tmp_path):
    env = {"HOME": str(tmp_path), "MODAL_CONFIG_PATH": str(tmp_path / "none.toml")}
    cfg = load_config(profile="modal", env=env)
    problems = offline_problems(cfg, env)
    assert [p.split(" ")[0] for p in problems] == ["NGPT_SFT_ADAPTER", "SERVE_URL", "SERVE_API_KEY", "OPENAI_API_KEY",
                                                   "Modal"]
    assert "upload --adapter" in problems[0]  # issue 27.3: training and deploy need it; say how to get it
    full = {**env, "SERVE_URL": "https://a/v1", "SERVE_API_KEY": "serve-test", "OPENAI_API_KEY": "sk-test",
            "MODAL_TOKEN_ID": "ak-1", "MODAL_TOKEN_SECRET": "as-1",
            "NGPT_SFT_ADAPTER": "/vol/adapters/nothing-gpt/0123456789abcdef"}
    assert offline_problems(load_config(profile="modal", env=full), full) == []
    assert not any("sk-test" in p or "serve-test" in p for p in problems)


def test_stage_folder_follows_input_and_settings(tmp_path):
    a = stage_dir(tmp_path, "judge", settings={"backend": "openai"}, input="abc")
    assert a == stage_dir(tmp_path, "judge", settings={"backend": "openai"}, input="abc")  # a rerun resumes here
    assert a != stage_dir(tmp_path, "judge", settings={"backend": "openai"}, input="abd")
    assert a != stage_dir(tmp_path, "judge", settings={"backend": "reference"}, input="abc")
    assert stage_key(x=1, y=2) == stage_key(y=2, x=1)


def _summary(**counts) -> StageSummary:
    return StageSummary(stage="judge", output=Path("/w/preferences.jsonl"), input=Path("/c.jsonl"),
                        counters=Counters(**counts), elapsed_s=1.5)


def test_failed_rows_fail_the_step_after_metadata():
    ok = _summary(total=4, succeeded=3, done_before=1, tokens_in=10, cost_usd=0.01)
    fail_if_incomplete(ok)
    meta = summary_metadata(ok)
    assert (meta["rows_total"], meta["rows_done_before"], meta["cost_usd"]) == (5, 1, 0.01)
    with pytest.raises(StageIncomplete, match=r"2 row\(s\) failed.*the 2 finished row\(s\) are kept.*rerun"):
        fail_if_incomplete(_summary(total=4, succeeded=2, failed=2))
    stopped = _summary(total=4, succeeded=1)
    stopped.interrupted, stopped.stopped_reason, stopped.unfinished = True, "SIGINT received", 3
    with pytest.raises(StageIncomplete, match=r"interrupted \(SIGINT received\); 3 row\(s\) not reached"):
        fail_if_incomplete(stopped)


def test_jsonl_file_counts_rows_and_hashes_content(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n')
    record = JsonlFile.of(path)
    assert record.rows == 2
    path.write_text('{"a": 1}\n{"a": 3}\n')
    assert JsonlFile.of(path).sha256 != record.sha256


def test_modal_deploy_refuses_a_live_dpo_adapter_that_is_not_the_trained_one():
    from serving.records import AdapterRecord
    from steps.records import AdapterRef
    from targets.modal import ModalTarget

    trained = AdapterRef(name="seinfeld-dpo", path="/vol/adapters/nothing-gpt-dpo", sha256="ab" * 32,
                         base_model="base", steps=4)

    class Record:
        def __init__(self, sha: str | None):
            self.adapters = [AdapterRecord("seinfeld", "/vol/a", "base", "sha256:" + "cd" * 32),
                             AdapterRecord("seinfeld-dpo", "/vol/b", "base", sha)]

    ModalTarget._check_live_adapter(Record("sha256:" + "ab" * 32), "seinfeld-dpo", trained)  # the same files: fine
    with pytest.raises(RuntimeError, match="seinfeld-dpo is live with adapter files .* not the ones asked for"):
        ModalTarget._check_live_adapter(Record("sha256:" + "ef" * 32), "seinfeld-dpo", trained)
