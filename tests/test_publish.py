"""`publish` (issue 31 part 4): a run's pairs as a Hugging Face dataset with its card, the DPO adapter with its
model card, and the push to the Hub.

The core runs on plain files built here (a split, a judge report, an adapter folder): no pipeline, no network.
The Hub is faked at the one call boundary publish uses (`huggingface_hub.HfApi`); every test that pushes checks
that the token appears in no file written and no log line. The ZenML lookup is tested on a fake run object here and
against a real tiny pipeline run in the one `e2e` test at the end.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest
import yaml

from infra.adapter_hash import adapter_sha256
from pipelines.publish import PublishError, PublishSource, TrainedAdapter, prepare_out, publish

TOKEN = "hf_publishTestTokenDoNotLeak1234567890"
BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"  # a Hub id: what a pushed adapter card needs as base_model
REPORT = {
    "output": "/home/someone/work/judge/x/preferences.jsonl",  # a local path the cards must not carry
    "judge": {"backend": "openai", "model": "gpt-5", "reasoning_effort": "low",
              "prompt_version": "seinfeld-rank-v1-abcdef12"},
    "rows": {"pairs": 5, "judged": 7, "filtered": {"low_confidence": 0, "swap_disagreement": 1},
             "skipped": {"too_few_distinct": 1}, "failed_latest_run": 0},
    "position_bias": {"3": {"rows": 6, "chosen_share": [0.5, 0.3333, 0.1667], "uniform_share": 0.3333,
                            "p_value": 0.4346}},
    "length_bias": {"pairs": 5, "chosen_longer": 3, "chosen_shorter": 2, "same_length": 0,
                    "chosen_longer_share": 0.6, "mean_chars_chosen": 120.5, "mean_chars_rejected": 99.0},
    "swap": {"checked": 6, "agreed": 5, "agreement": 0.8333},
    "warnings": [],
}
AB = {"baseline": "seinfeld", "challenger": "seinfeld-dpo", "wins": 7, "losses": 2, "ties": 1, "judged": 10,
      "win_rate": {"win_rate_all": 0.75, "ci95_all": [0.4677, 0.9111], "win_rate_decided": 0.7778,
                   "ci95_decided": [0.453, 0.9368], "interval": "wilson"},
      "order_agreement": 0.9, "judge_backend": "openai", "judge_model": "gpt-5"}


def _pair(i: int) -> dict:
    prompt = [{"role": "system", "content": "You are a writer for Seinfeld."},
              {"role": "user", "content": f"[JERRY] Scene {i}: what is the deal with {i}?"}]
    return {"id": f"row{i:02d}", "input": "f00", "prompt": prompt,
            "chosen": [{"role": "assistant", "content": f"[GEORGE] good {i}"}],
            "rejected": [{"role": "assistant", "content": f"As an AI, {i}"}],
            "judge": {"model": "gpt-5", "reason": f"A keeps the voices ({i})", "usage": {"cost_usd": 0.01}}}


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path


@pytest.fixture
def source(tmp_path) -> PublishSource:
    """A finished run's records as publish reads them: 3 train pairs, 2 val pairs, a report, a trained adapter."""
    run = tmp_path / "run"
    run.mkdir()
    train = _jsonl(run / "train.jsonl", [_pair(i) for i in range(3)])
    val = _jsonl(run / "val.jsonl", [_pair(i) for i in range(3, 5)])
    adapter = run / "adapter" / "403fe7c3fed7b99e"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": BASE, "r": 8,
                                                             "lora_alpha": 16, "target_modules": ["q_proj"]}))
    (adapter / "adapter_model.safetensors").write_bytes(b"\x00weights\x01" * 8)
    (adapter / "README.md").write_text("PEFT's template card")
    (adapter / "training_metrics.json").write_text(json.dumps({"config": {"data_dir": "/home/someone/data"}}))
    trained = TrainedAdapter(path=adapter, sha256=adapter_sha256(adapter), base_model=BASE, steps=4,
                             metrics={"steps": 4, "eval_loss": 0.54215848, "log_history": [{"loss": 1}]},
                             config={"beta": 0.1, "learning_rate": 5e-6, "max_steps": 4, "output_dir": "/home/x"},
                             sft_adapter_sha256="5f7" * 21 + "5")
    return PublishSource(
        run_name="dpo-local-2026_12_08-00_06_35", run_id="548dec09-419f", round=1, train=train, val=val,
        judge_report=REPORT, prompts_file="data/sample/prompts.jsonl", prompts_sha256="69c7" * 16,
        sampling={"model": "seinfeld", "n": 3, "temperature": 0.9, "max_tokens": 256},
        judge={"backend": "openai", "model": "gpt-5", "reasoning effort": "low",
               "prompt version": "seinfeld-rank-v1-abcdef12", "prompt sha256": "abcdef12" * 8},
        judged_pairs=5, adapter=trained, ab_result=AB,
        gate={"passed": True, "action": "kept", "message": "the gate passed"})


def _card(path: Path) -> tuple[dict, str]:
    _, header, body = path.read_text().split("---\n", 2)
    return yaml.safe_load(header), body


def test_the_dataset_reads_back_with_load_dataset_and_its_card_states_the_provenance(source, tmp_path, monkeypatch):
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # a local folder: the Hub is never asked
    out = tmp_path / "out"
    published = publish(source, out)

    loaded = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "hf-cache"))
    assert set(loaded) == {"train", "validation"}
    for split, expected in (("train", [_pair(i) for i in range(3)]), ("validation", [_pair(i) for i in (3, 4)])):
        rows = loaded[split].to_list()
        assert [r["id"] for r in rows] == [e["id"] for e in expected]
        for row, pair in zip(rows, expected, strict=True):
            assert (row["prompt"], row["chosen"], row["rejected"]) == (pair["prompt"], pair["chosen"], pair["rejected"])
            assert row["reason"] == pair["judge"]["reason"] and row["round"] == 1 and row["source"] == "judge"
    assert published.counts == {"pairs": 5, "train": 3, "validation": 2}

    header, body = _card(out / "README.md")
    assert header["configs"] == [{"config_name": "default", "data_files": [
        {"split": "train", "path": "data/train-*.parquet"},
        {"split": "validation", "path": "data/validation-*.parquet"}]}]
    assert header["license"] == "other" and "text-generation" in header["task_categories"]
    assert {"dpo", "preference"} <= set(header["tags"])
    for fact in ("data/sample/prompts.jsonl", "69c7" * 16, "`seinfeld`", "| n | `3` |", "| temperature | `0.9` |",
                 "| max_tokens | `256` |", "`gpt-5`", "abcdef12" * 8, "seinfeld-rank-v1-abcdef12",
                 "| reasoning effort | `low` |", "| pairs | 5 |", "| train split | 3 |", "| validation split | 2 |",
                 "| skipped: swap disagreement | 1 |", "| skipped: too few distinct | 1 |", "p = 0.4346", "60.0%",
                 "83.3% of 6", "placeholder"):
        assert fact in body, fact
    assert "/home/someone" not in (out / "README.md").read_text()


def test_the_adapter_card_sits_beside_a_copy_and_the_run_adapter_is_untouched(source, tmp_path):
    run_adapter = source.adapter.path
    before = {p.name: p.read_bytes() for p in run_adapter.iterdir()}
    out = tmp_path / "out"
    published = publish(source, out, license_id="other")

    assert {p.name: p.read_bytes() for p in run_adapter.iterdir()} == before
    copied = out / "adapter"
    assert sorted(p.name for p in copied.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert adapter_sha256(copied) == source.adapter.sha256  # byte for byte: the run's hash holds for the copy
    header, body = _card(copied / "README.md")
    assert header["base_model"] == BASE and header["library_name"] == "peft"
    assert {"dpo", "lora", "trl"} <= set(header["tags"]) and header["datasets"] == ["out"]
    assert published.dataset_card_sha256 in body
    import hashlib

    assert published.dataset_card_sha256 == hashlib.sha256((out / "README.md").read_bytes()).hexdigest()
    for fact in ("5f7" * 21 + "5", source.adapter.sha256, "| beta | `0.1` |", "| learning_rate | `5e-06` |",
                 "| lora r | `8` |", "| eval_loss | `0.5422` |", "7 / 2 / 1", "75.0% [46.8%, 91.1%]",
                 "| win rate, length-controlled (LC) | not computed |", "Gate: kept"):
        assert fact in body, fact
    assert "/home/" not in body and "log_history" not in body  # paths and curves stay out of the card


def test_the_length_controlled_win_rate_is_shown_when_the_ab_result_has_one(source, tmp_path):
    import dataclasses

    with_lc = {**AB, "lc_win_rate": {"win_rate": 0.62, "ci95": [0.41, 0.8], "interval": "bootstrap 1000"},
               "disagree": "raw 75.0% says seinfeld-dpo better, length-controlled 62.0% says no clear difference"}
    publish(dataclasses.replace(source, ab_result=with_lc), tmp_path / "out")
    card = (tmp_path / "out/adapter/README.md").read_text()
    assert "| win rate, length-controlled (LC) | 62.0% [41.0%, 80.0%] |" in card
    assert "LC: bootstrap 1000" in card and "length-controlled 62.0% says no clear difference" in card


def test_judge_info_names_the_prompt_hash_or_the_offline_rubric():
    import hashlib

    from pipelines.cli_publish import judge_info
    from stages.judge.prompt import PROMPT_VERSION, RUBRIC

    model = judge_info({"judge": {"backend": "openai", "model": "gpt-5", "reasoning_effort": "low",
                                  "prompt_version": PROMPT_VERSION}}, {"swap_check": True})
    assert model["prompt sha256"] == hashlib.sha256(RUBRIC.encode()).hexdigest()
    assert model["rubric version"] == PROMPT_VERSION and model["swap check"] is True
    older = judge_info({"judge": {"backend": "openai", "prompt_version": "seinfeld-rank-v1-00000000"}}, {})
    assert older["prompt sha256"].startswith("00000000...")  # only the version's prefix is known
    offline = judge_info({"judge": {"backend": "reference", "model": "reference-rubric-v2",
                                    "prompt_version": PROMPT_VERSION}}, {})
    assert offline["rubric version"] == "reference-rubric-v2" and offline["prompt sha256"].startswith("n/a")
    ledger = {"ledger": {"judge": {"backend": "openai", "prompt_version": "v", "prompt_sha256": "ff" * 32}}}
    assert judge_info(ledger, {})["prompt sha256"] == "ff" * 32  # the report's own record wins


def test_rows_carry_their_round_and_source(source, tmp_path):
    import dataclasses

    import pyarrow.parquet as pq

    val = _jsonl(tmp_path / "val.jsonl", [_pair(3), {**_pair(4), "source": "arena", "judge": None}])
    publish(dataclasses.replace(source, round=2, val=val, row_rounds={"row00": 1}), tmp_path / "out")
    train = pq.read_table(tmp_path / "out/data/train-00000-of-00001.parquet").to_pylist()
    assert [r["round"] for r in train] == [1, 2, 2]  # row00 came from round 1's pairs, merged into round 2's
    validation = pq.read_table(tmp_path / "out/data/validation-00000-of-00001.parquet").to_pylist()
    assert [(r["source"], r["reason"]) for r in validation] == [("judge", "A keeps the voices (3)"), ("arena", None)]


def test_the_out_folder_must_be_empty_and_force_replaces_only_an_earlier_publish(source, tmp_path):
    out = tmp_path / "out"
    publish(source, out)
    with pytest.raises(PublishError, match="not empty.*--force"):
        publish(source, out)
    publish(source, out, force=True)  # an earlier publish: replaced
    (out / "notes.txt").write_text("mine")
    with pytest.raises(PublishError, match="did not write.*notes.txt"):
        prepare_out(out, force=True)
    assert (out / "notes.txt").read_text() == "mine" and (out / "README.md").exists()


def test_a_split_that_is_not_preference_data_is_refused(source, tmp_path):
    import dataclasses

    bad = _jsonl(tmp_path / "bad.jsonl", [{"prompt": "x", "chosen": "same", "rejected": "same"}])
    with pytest.raises(PublishError, match="invalid preference row"):
        publish(dataclasses.replace(source, train=bad), tmp_path / "out")


def test_a_changed_adapter_is_refused(source, tmp_path):
    (source.adapter.path / "adapter_model.safetensors").write_bytes(b"other weights")
    with pytest.raises(PublishError, match="changed since the run"):
        publish(source, tmp_path / "out")


# -- the CLI and the Hub, faked at HfApi ----------------------------------------------------------------------------


class FakeHub:
    """Records every HfApi call publish makes; `public` names repositories that already exist public."""

    def __init__(self, public: frozenset[str] = frozenset(), fail_upload: bool = False):
        self.calls: list[tuple] = []
        self.tokens: list[str | None] = []
        self.public, self.fail_upload = public, fail_upload
        self.created: dict[str, bool] = {}

    def api(self, token=None, **_):
        self.tokens.append(token)
        hub = self

        class Api:
            def create_repo(self, repo_id, *, repo_type=None, private=None, exist_ok=False, **kw):
                hub.calls.append(("create_repo", repo_id, repo_type, private, exist_ok))
                hub.created.setdefault(repo_id, bool(private) and repo_id not in hub.public)

            def repo_info(self, repo_id, *, repo_type=None, **kw):
                return SimpleNamespace(private=hub.created[repo_id])

            def upload_folder(self, *, repo_id, folder_path, repo_type=None, ignore_patterns=None, **kw):
                if hub.fail_upload:
                    import httpx2
                    from huggingface_hub.errors import HfHubHTTPError

                    response = httpx2.Response(401, request=httpx2.Request("POST", "https://huggingface.co/api"))
                    raise HfHubHTTPError("401 Client Error: Unauthorized", response=response)
                hub.calls.append(("upload_folder", repo_id, repo_type, Path(folder_path), ignore_patterns))

        return Api()


@pytest.fixture
def cli(source, monkeypatch, caplog, capsys):
    """Run `python -m pipelines.dpo publish ...` in this process on `source`, the Hub faked; returns
    (exit code, everything logged and printed)."""
    import huggingface_hub

    import pipelines.cli_publish

    monkeypatch.setattr(pipelines.cli_publish, "load_source", lambda run, adapter_dir=None: source)
    hub = FakeHub()
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda *a, **kw: hub.api(*a, **kw))

    def run(*args: str, env_token: str | None = TOKEN) -> tuple[int, str]:
        from pipelines.dpo import main

        if env_token is None:
            monkeypatch.delenv("HF_TOKEN", raising=False)
        else:
            monkeypatch.setenv("HF_TOKEN", env_token)
        caplog.clear()
        with caplog.at_level(logging.DEBUG):
            code = main(["publish", *args])
        captured = capsys.readouterr()
        return code, captured.out + captured.err + "\n".join(r.getMessage() for r in caplog.records)

    run.hub = hub
    return run


def _no_token_anywhere(out: Path, logs: str) -> None:
    assert TOKEN not in logs
    for path in out.rglob("*") if out.exists() else []:
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


def test_push_creates_private_repos_and_uploads_both_folders_without_leaking_the_token(cli, tmp_path):
    out = tmp_path / "out"
    code, logs = cli("--out", str(out), "--push-to-hub", "someone/seinfeld-dpo-pairs")
    assert code == 0, logs
    calls = cli.hub.calls
    assert calls == [
        ("create_repo", "someone/seinfeld-dpo-pairs", "dataset", True, True),
        ("create_repo", "someone/seinfeld-dpo-pairs-adapter", "model", True, True),
        ("upload_folder", "someone/seinfeld-dpo-pairs", "dataset", out, ["adapter/*"]),
        ("upload_folder", "someone/seinfeld-dpo-pairs-adapter", "model", out / "adapter", None),
    ]
    assert cli.hub.tokens == [TOKEN]  # given to the client, nowhere else
    header, _ = _card(out / "adapter" / "README.md")
    assert header["datasets"] == ["someone/seinfeld-dpo-pairs"]  # the adapter card names the pushed dataset
    assert "https://huggingface.co/datasets/someone/seinfeld-dpo-pairs (private)" in logs
    _no_token_anywhere(out, logs)


def test_public_and_a_named_adapter_repo(cli, tmp_path):
    code, logs = cli("--out", str(tmp_path / "out"), "--push-to-hub", "someone/pairs", "--public",
                     "--adapter-repo", "someone/dpo-lora")
    assert code == 0, logs
    assert [c[1:4] for c in cli.hub.calls if c[0] == "create_repo"] == [
        ("someone/pairs", "dataset", False), ("someone/dpo-lora", "model", False)]
    _no_token_anywhere(tmp_path / "out", logs)


def test_an_existing_public_repo_is_not_pushed_private_data(cli, tmp_path):
    cli.hub.public = frozenset({"someone/pairs"})
    code, logs = cli("--out", str(tmp_path / "out"), "--push-to-hub", "someone/pairs")
    assert code == 2 and "exists and is public" in logs and "nothing was uploaded" in logs
    assert not [c for c in cli.hub.calls if c[0] == "upload_folder"]
    _no_token_anywhere(tmp_path / "out", logs)


def test_a_refused_upload_exits_1_without_a_traceback_or_the_token(cli, tmp_path):
    cli.hub.fail_upload = True
    code, logs = cli("--out", str(tmp_path / "out"), "--push-to-hub", "someone/pairs")
    assert code == 1 and "the push failed (401 Client Error: Unauthorized)" in logs
    assert "Traceback" not in logs
    _no_token_anywhere(tmp_path / "out", logs)


def test_without_hf_token_exit_2_names_the_variable_and_writes_nothing(cli, tmp_path):
    code, logs = cli("--out", str(tmp_path / "out"), "--push-to-hub", "someone/pairs", env_token=None)
    assert code == 2 and "HF_TOKEN" in logs
    assert not (tmp_path / "out").exists() and cli.hub.calls == []


@pytest.mark.parametrize(("args", "message"), [
    (["--push-to-hub", "not a repo"], "OWNER/NAME"),
    (["--public"], "--public applies to --push-to-hub"),
])
def test_bad_flags_exit_2(cli, tmp_path, args, message):
    code, logs = cli("--out", str(tmp_path / "out"), *args)
    assert code == 2 and message in logs and "Traceback" not in logs


def test_a_not_empty_out_exits_2_naming_force(cli, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("x")
    code, logs = cli("--out", str(tmp_path / "out"))
    assert code == 2 and "not empty" in logs and "--force" in logs


def test_pushing_an_adapter_trained_on_a_local_base_needs_base_model(cli, source, tmp_path, monkeypatch):
    import dataclasses

    import pipelines.cli_publish

    local = dataclasses.replace(source, adapter=dataclasses.replace(source.adapter, base_model=str(tmp_path)))
    monkeypatch.setattr(pipelines.cli_publish, "load_source", lambda run, adapter_dir=None: local)
    code, logs = cli("--out", str(tmp_path / "out"), "--push-to-hub", "someone/pairs")
    assert code == 2 and "--base-model" in logs and cli.hub.calls == []
    code, logs = cli("--out", str(tmp_path / "out2"), "--push-to-hub", "someone/pairs", "--base-model", BASE)
    assert code == 0, logs
    config = json.loads((tmp_path / "out2/adapter/adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == BASE  # PEFT loads the base from the Hub
    assert _card(tmp_path / "out2/adapter/README.md")[0]["base_model"] == BASE


# -- the ZenML lookup, on a fake run ---------------------------------------------------------------------------------


def _artifact(value, metadata=None):
    return SimpleNamespace(load=lambda: value, run_metadata=metadata or {})


def _step(outputs=None, metadata=None, inputs=None, status="completed"):
    return SimpleNamespace(outputs={k: [v] for k, v in (outputs or {}).items()}, run_metadata=metadata or {},
                           inputs=inputs or {}, status=SimpleNamespace(value=status))


def _fake_run(source: PublishSource, **steps) -> SimpleNamespace:
    from steps.records import AdapterRef, JsonlFile, Report

    ref = AdapterRef(name="seinfeld-dpo", path=str(source.adapter.path), sha256=source.adapter.sha256, base_model=BASE,
                     steps=4, metrics={"steps": 4})
    all_steps = {
        "generate_completions": _step(metadata={"model": "seinfeld", "n": 3}),
        "judge_preferences": _step({"preferences": _artifact(JsonlFile.of(source.train)),
                                    "quality_report": _artifact(Report(data=REPORT, markdown=""))}, {"pairs": 5}),
        "split_dataset": _step({"train_set": _artifact(JsonlFile.of(source.train)),
                                "val_set": _artifact(JsonlFile.of(source.val))}),
        "train_adapter": _step({"dpo_adapter": _artifact(ref)}),
        "evaluate_adapters": _step({"ab_eval": _artifact(SimpleNamespace(data=AB))}),
        "promote_or_rollback": _step({"gate_decision": _artifact({"passed": True, "action": "kept"})}),
    }
    all_steps.update(steps)
    params = {"prompts": {"file": "data/sample/prompts.jsonl", "sha256": "ab" * 32},
              "generate": {"model": "seinfeld", "n": 3, "temperature": 0.9, "max_tokens": 48, "seed": 0},
              "judge": {"backend": "openai", "swap_check": True}, "target": {"model_key": "tiny-kit:c81a"}}
    return SimpleNamespace(name="dpo-local-round2-2026_12_08", id="548dec09", run_metadata={},
                           steps={k: v for k, v in all_steps.items() if v is not None},
                           config=SimpleNamespace(parameters=params))


def test_the_lookup_reads_a_runs_outputs_and_parameters(source):
    from pipelines.cli_publish import source_from_run

    earlier = _artifact(SimpleNamespace(path=source.train), metadata={"round": 1})
    merged = _step(inputs={"earlier": earlier})
    found = source_from_run(_fake_run(source, merge_preferences_1=merged))
    assert found.round == 2  # from the rounds' run name when no `round` metadata is recorded
    assert found.row_rounds == {"row00": 1, "row01": 1, "row02": 1}
    assert found.sampling == {"model": "seinfeld", "model key": "tiny-kit:c81a", "n": 3, "temperature": 0.9,
                              "max_tokens": 48, "seed": 0}
    assert found.judge["model"] == "gpt-5" and found.judge["swap check"] is True
    assert found.prompts_sha256 == "ab" * 32 and found.train == source.train and found.val == source.val
    assert found.adapter.sha256 == source.adapter.sha256 and found.ab_result == AB and found.gate["action"] == "kept"


def test_the_lookup_refuses_a_run_without_judge_output(source):
    from pipelines.cli_publish import source_from_run

    run = _fake_run(source, judge_preferences=_step(status="failed"))
    with pytest.raises(PublishError, match="no judge output .*judge_preferences is failed"):
        source_from_run(run)
    with pytest.raises(PublishError, match="no judge output .*did not run"):
        source_from_run(_fake_run(source, judge_preferences=None))


def test_an_unknown_run_is_a_clear_error(tmp_path):
    from pipelines.cli_publish import _find_run

    class Client:
        def get_pipeline_run(self, ref):
            raise KeyError(f"No runs have been found that match {ref!r}")

        def list_pipeline_runs(self, **kw):
            return SimpleNamespace(items=[])

    with pytest.raises(PublishError, match="no run named 'nope'"):
        _find_run(Client(), "nope", "dpo", tmp_path)
    with pytest.raises(PublishError, match="no completed run"):
        _find_run(Client(), "latest", "dpo", tmp_path)


# The end-to-end check (a real run's ZenML store, then `publish` through the CLI) is in tests/test_rounds.py: it
# publishes the rounds chain's last run instead of running a pipeline of its own.
