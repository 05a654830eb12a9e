"""DPO training on the tiny kit (CPU): what `train_dpo` changes, saves, reports, resumes and refuses."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from training.adapters import adapter_sha256, servable_problems
from training.config import ConfigError, DPOTrainConfig
from training.dpo import train_dpo
from training.errors import TrainingInputError
from training.tiny import sample_preference_rows, write_sample_preferences

FINAL_KEYS = (
    "train_loss", "train_rewards/accuracies", "train_rewards/margins",
    "eval_loss", "eval_rewards/accuracies", "eval_rewards/margins", "train_runtime",
)


def make_config(kit, data_dir: Path, work: Path, **overrides) -> DPOTrainConfig:
    settings = {
        "data_dir": str(data_dir),
        "base_model": str(kit.base_dir),
        "sft_adapter": str(kit.sft_adapter_dir),
        "output_dir": str(work / "checkpoints"),
        "adapter_out": str(work / "adapter"),
    }
    return DPOTrainConfig.cpu_test(**{**settings, **overrides})


def lora_weights(named_tensors, adapter: str | None = None) -> dict:
    """LoRA tensors keyed like the saved file (`...q_proj.lora_A.weight`), for one adapter name."""
    out = {}
    for name, tensor in named_tensors:
        if "lora_" not in name:
            continue
        if adapter is None:
            out[name] = tensor.detach().clone()
        elif f".{adapter}." in name:
            out[name.replace(f".{adapter}.", ".")] = tensor.detach().clone()
    return out


def load_adapter_file(adapter_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(adapter_dir / "adapter_model.safetensors"))


def capture_callback(store: dict):
    from transformers import TrainerCallback

    class Capture(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kwargs):
            store["policy"] = lora_weights(model.named_parameters(), "default")
            store["ref"] = lora_weights(model.named_parameters(), "ref")
            store["adapters"] = sorted(model.peft_config)

    return Capture()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_sample_preferences(tmp_path_factory.mktemp("pairs"))


@pytest.fixture(scope="module")
def first_run(tiny_kit, data_dir, tmp_path_factory):
    """Two DPO steps with a checkpoint at step 2; shared by the tests below (training is the slow part)."""
    work = tmp_path_factory.mktemp("dpo")
    store: dict = {"logs": []}
    config = make_config(tiny_kit, data_dir, work)
    result = train_dpo(config, progress=store["logs"].append, callbacks=[capture_callback(store)])
    return result, store, config, work


def test_policy_moves_and_reference_stays(first_run, tiny_kit):
    _, store, _, _ = first_run
    sft = load_adapter_file(tiny_kit.sft_adapter_dir)
    assert store["adapters"] == ["default", "ref"]  # one base, two adapters
    assert set(store["policy"]) == set(sft) == set(store["ref"])
    for name, tensor in sft.items():
        assert store["ref"][name].equal(tensor), f"reference adapter changed: {name}"
    moved = [name for name, tensor in sft.items() if not store["policy"][name].equal(tensor)]
    assert len(moved) == len(sft), f"policy tensors that did not move: {set(sft) - set(moved)}"


def test_only_policy_saved_and_loads_onto_base(first_run, tiny_kit):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result, store, _, _ = first_run
    files = sorted(p.name for p in result.adapter_dir.iterdir())
    assert "adapter_config.json" in files and "adapter_model.safetensors" in files
    assert not any((result.adapter_dir / f).is_dir() for f in files), f"sub-adapter folders saved: {files}"
    saved = load_adapter_file(result.adapter_dir)
    assert set(saved) == set(store["policy"])  # no `ref` tensors
    for name, tensor in saved.items():
        assert tensor.equal(store["policy"][name]), name

    config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["bias"] == "none" and not config.get("modules_to_save")
    assert servable_problems(config, 32) == []

    base = AutoModelForCausalLM.from_pretrained(tiny_kit.base_dir)
    model = PeftModel.from_pretrained(base, result.adapter_dir, adapter_name="seinfeld-dpo")
    loaded = lora_weights(model.named_parameters(), "seinfeld-dpo")
    assert all(loaded[name].equal(tensor) for name, tensor in saved.items())
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert torch.isfinite(logits).all()


def test_metrics_present_finite_and_written(first_run):
    result, store, _, _ = first_run
    assert result.steps == 2 and result.metrics["steps"] == 2
    for key in FINAL_KEYS:
        value = result.metrics[key]
        assert value is not None and math.isfinite(value), (key, value)
    assert 0.0 <= result.metrics["eval_rewards/accuracies"] <= 1.0
    record = json.loads(result.metrics_path.read_text())
    assert result.metrics_path.parent == result.adapter_dir
    assert record["metrics"] == result.metrics
    assert record["adapter_sha256"] == result.adapter_sha256 == adapter_sha256(result.adapter_dir)
    assert [log["step"] for log in store["logs"] if "loss" in log] == [1, 2]  # the progress hook


def test_a_finished_run_returns_its_adapter_unchanged(first_run, monkeypatch):
    """Rerunning a finished run (a pipeline rerun, --no-cache, a Modal retry) never trains past its plan."""
    import training.dpo as dpo

    result, _, config, _ = first_run
    monkeypatch.setattr(dpo, "_load_policy", lambda config: pytest.fail("a finished run was trained again"))
    again = train_dpo(config)
    assert (again.adapter_dir, again.adapter_sha256, again.steps) == (result.adapter_dir, result.adapter_sha256, 2)
    assert again.metrics == result.metrics
    weights = result.adapter_dir / "adapter_model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(b"changed")  # the adapter the run saved was modified: say so, do not retrain silently
    try:
        with pytest.raises(TrainingInputError, match="gone or changed"):
            train_dpo(config)
    finally:
        weights.write_bytes(original)


def test_resume_continues_from_checkpoint(first_run, tiny_kit, data_dir, capfd, caplog):
    caplog.set_level("INFO", logger="training.dpo")
    _, _, config, work = first_run
    result, _, _, _ = first_run
    assert (result.checkpoint_dir / "checkpoint-2" / "trainer_state.json").is_file()
    assert result.checkpoint_dir.parent == work / "checkpoints"  # <output_dir>/<run id>
    store: dict = {"logs": []}
    resumed = make_config(tiny_kit, data_dir, work, max_steps=4, adapter_out=str(work / "adapter-resumed"))
    result = train_dpo(resumed, progress=store["logs"].append, callbacks=[capture_callback(store)])
    assert result.steps == 4
    assert result.metrics["resumed_from"].endswith("checkpoint-2")
    assert [log["step"] for log in store["logs"] if "loss" in log] == [3, 4]  # steps 1-2 not redone
    assert "'loss'" not in capfd.readouterr().out  # metrics are logged, not print()ed over the CLI's stdout
    assert any(r.message.startswith("step 3/4: loss=") for r in caplog.records)
    sft = load_adapter_file(tiny_kit.sft_adapter_dir)
    assert all(store["ref"][name].equal(t) for name, t in sft.items())  # still the SFT adapter


class _Killed(RuntimeError):
    """Raised by a callback right after a checkpoint is saved: the process dies there (preemption, kill)."""


def kill_after_save(at_step: int):
    from transformers import TrainerCallback

    class KillAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == at_step:
                raise _Killed(f"killed after saving checkpoint-{at_step}")

    return KillAfterSave()


def capture_at_resume(store: dict):
    """The policy's weights when the resumed run takes its first step, and the optimizer's state for them."""
    from transformers import TrainerCallback

    class Capture(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
            if "policy_at_start" in store:
                return
            store["policy_at_start"] = lora_weights(model.named_parameters(), "default")
            named = {id(p): n for n, p in model.named_parameters()}
            store["exp_avg"] = {
                named[id(p)].replace(".default.", "."): optimizer.state[p]["exp_avg"].clone()
                for group in optimizer.param_groups for p in group["params"]
                if p in optimizer.state and id(p) in named
            }

    return Capture()


@pytest.mark.slow
@pytest.mark.e2e  # whole-process work (~10-25 s) moved to `make slow` to keep `make test` under 10 minutes
def test_a_resumed_run_continues_the_checkpointed_policy_and_matches_an_uninterrupted_run(
        tiny_kit, data_dir, tmp_path):
    """Issue 18.1: `trainer.train(resume_from_checkpoint=...)` loads only the `ref/` sub-adapter; the policy
    (`default`, at the checkpoint's root) must come back too, with the optimizer state applied to it."""
    import torch

    plan = {"max_steps": 4, "save_steps": 2, "eval_steps": 4, "lr_scheduler_type": "linear"}
    interrupted = make_config(tiny_kit, data_dir, tmp_path / "interrupted", **plan)
    with pytest.raises(_Killed):
        train_dpo(interrupted, callbacks=[kill_after_save(2)])
    checkpoint = next((tmp_path / "interrupted" / "checkpoints").glob("*/checkpoint-2"))
    saved = load_file_dict(checkpoint / "adapter_model.safetensors")
    sft = load_adapter_file(tiny_kit.sft_adapter_dir)
    assert any(not saved[k].equal(sft[k]) for k in sft), "the checkpoint's policy should have moved off the SFT"

    store: dict = {}
    resumed = train_dpo(interrupted, callbacks=[capture_at_resume(store), capture_callback(store)])
    assert resumed.metrics["resumed_from"].endswith("checkpoint-2") and resumed.steps == 4
    assert set(store["policy_at_start"]) == set(saved)
    for name, tensor in saved.items():  # the policy the resumed run trains on is the checkpoint's, entry by entry
        assert store["policy_at_start"][name].equal(tensor.to(store["policy_at_start"][name].dtype)), name
    optimizer_file = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    assert store["exp_avg"] and len(store["exp_avg"]) == len(optimizer_file["state"])  # moments came back
    assert all(m.abs().sum() > 0 for m in store["exp_avg"].values())

    straight = make_config(tiny_kit, data_dir, tmp_path / "straight", **plan)
    uninterrupted = train_dpo(straight)
    final_resumed = load_adapter_file(resumed.adapter_dir)
    final_straight = load_adapter_file(uninterrupted.adapter_dir)
    assert set(final_resumed) == set(final_straight)
    for name, tensor in final_straight.items():
        assert torch.allclose(final_resumed[name], tensor, rtol=1e-4, atol=1e-6), name
        assert not tensor.equal(saved[name]), f"steps 3-4 did not move {name}"


def load_file_dict(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_adapter_hash_is_content_hash(tmp_path, tiny_kit):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_kit.sft_adapter_dir, copy)
    (copy / "README.md").write_text("not part of the adapter")
    assert adapter_sha256(copy) == adapter_sha256(tiny_kit.sft_adapter_dir)
    weights = copy / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    assert adapter_sha256(copy) != adapter_sha256(tiny_kit.sft_adapter_dir)


# Errors raised before any model is loaded.


def write_rows(path: Path, rows: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def good_data(tmp_path) -> Path:
    return write_sample_preferences(tmp_path / "data")


def test_missing_train_file_is_named(tiny_kit, good_data, tmp_path):
    (good_data / "train.jsonl").unlink()
    with pytest.raises(TrainingInputError, match="train.jsonl: preference data file not found"):
        train_dpo(make_config(tiny_kit, good_data, tmp_path))


def test_empty_val_file_is_named(tiny_kit, good_data, tmp_path):
    (good_data / "val.jsonl").write_text("\n")
    with pytest.raises(TrainingInputError, match="val.jsonl: preference data file is empty"):
        train_dpo(make_config(tiny_kit, good_data, tmp_path))


def test_row_without_rejected_names_file_and_line(tiny_kit, good_data, tmp_path):
    rows = sample_preference_rows()[:3]
    del rows[1]["rejected"]
    write_rows(good_data / "train.jsonl", rows)
    with pytest.raises(TrainingInputError, match=r'train\.jsonl:2: missing "rejected"'):
        train_dpo(make_config(tiny_kit, good_data, tmp_path))


def test_string_rows_are_accepted_but_not_mixed(tiny_kit, good_data, tmp_path):
    rows = [{"prompt": "[JERRY] Hi.", "chosen": "[GEORGE] Hey.", "rejected": "no"}, sample_preference_rows()[0]]
    write_rows(good_data / "train.jsonl", rows)
    with pytest.raises(TrainingInputError, match=r"train\.jsonl:2: row is conversational but earlier rows"):
        train_dpo(make_config(tiny_kit, good_data, tmp_path))


def test_missing_sft_adapter(tiny_kit, good_data, tmp_path):
    config = make_config(tiny_kit, good_data, tmp_path, sft_adapter=str(tmp_path / "nope"))
    with pytest.raises(TrainingInputError, match="SFT adapter folder .*nope does not exist"):
        train_dpo(config)


def copy_adapter(kit, tmp_path: Path, **changes) -> Path:
    copy = tmp_path / "sft-copy"
    shutil.copytree(kit.sft_adapter_dir, copy)
    config = json.loads((copy / "adapter_config.json").read_text())
    config.update(changes)
    (copy / "adapter_config.json").write_text(json.dumps(config))
    return copy


def test_sft_adapter_for_another_base(tiny_kit, good_data, tmp_path):
    other = "meta-llama/Llama-3.1-8B-Instruct"
    adapter = copy_adapter(tiny_kit, tmp_path, base_model_name_or_path=other)
    with pytest.raises(TrainingInputError) as err:
        train_dpo(make_config(tiny_kit, good_data, tmp_path, sft_adapter=str(adapter)))
    assert other in str(err.value) and str(tiny_kit.base_dir) in str(err.value)


def test_sft_adapter_rank_over_serving_limit(tiny_kit, good_data, tmp_path):
    adapter = copy_adapter(tiny_kit, tmp_path, r=64)
    with pytest.raises(TrainingInputError, match="rank 64 exceeds the serving limit --max-lora-rank 32"):
        train_dpo(make_config(tiny_kit, good_data, tmp_path, sft_adapter=str(adapter)))


def test_wandb_without_key_fails_instead_of_prompting(tiny_kit, good_data, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    with pytest.raises(TrainingInputError, match="WANDB_API_KEY is not set"):
        train_dpo(make_config(tiny_kit, good_data, tmp_path, report_to="wandb"))
    assert make_config(tiny_kit, good_data, tmp_path).resolved_report_to() == "none"
    auto = make_config(tiny_kit, good_data, tmp_path, report_to="auto")
    assert auto.resolved_report_to() == "none"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert auto.resolved_report_to() == "wandb"


def test_gpu_config_without_gpu_fails_before_loading(tiny_kit, good_data, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    config = DPOTrainConfig(
        data_dir=str(good_data), base_model=str(tiny_kit.base_dir), sft_adapter=str(tiny_kit.sft_adapter_dir),
        output_dir=str(tmp_path / "c"), adapter_out=str(tmp_path / "a"), report_to="none",
    )
    with pytest.raises(TrainingInputError, match="no CUDA GPU found"):
        train_dpo(config)


def test_each_run_resumes_its_own_checkpoint_folder_and_nothing_is_deleted(tiny_kit, good_data, tmp_path):
    """A retry or rerun of the same run resumes; new data (the second pipeline run) starts clean beside it."""
    from training.resume import checkpoint_to_resume

    first = make_config(tiny_kit, good_data, tmp_path)
    folder, resume_from = checkpoint_to_resume(first)
    assert folder.parent == tmp_path / "checkpoints" and resume_from is None
    (folder / "checkpoint-7").mkdir()
    (folder / "checkpoint-7" / "trainer_state.json").write_text("{}")
    (folder / "checkpoint-9").mkdir()  # incomplete: no trainer_state.json yet

    assert checkpoint_to_resume(first) == (folder, folder / "checkpoint-7")  # a retry of the same run
    assert checkpoint_to_resume(make_config(tiny_kit, good_data, tmp_path, max_steps=50)) == (
        folder, folder / "checkpoint-7")  # step counts may change on resume

    new_data = write_sample_preferences(tmp_path / "new-data", n_val=3)
    other, resume_other = checkpoint_to_resume(make_config(tiny_kit, new_data, tmp_path))
    assert other != folder and resume_other is None  # another run: its own folder, a clean start
    restarted, resume_restarted = checkpoint_to_resume(make_config(tiny_kit, good_data, tmp_path, restart="r2"))
    assert restarted not in (folder, other) and resume_restarted is None
    assert (folder / "checkpoint-7" / "trainer_state.json").is_file()  # nothing deleted
    assert checkpoint_to_resume(first) == (folder, folder / "checkpoint-7")


def test_a_run_folder_recording_another_run_is_refused(tiny_kit, good_data, tmp_path):
    from training.resume import checkpoint_to_resume

    config = make_config(tiny_kit, good_data, tmp_path)
    folder, _ = checkpoint_to_resume(config)
    (folder / "run.json").write_text(json.dumps({"train_sha256": "something else"}))
    with pytest.raises(TrainingInputError, match="records another run"):
        train_dpo(config)


def test_prompts_longer_than_max_length_are_reported(tiny_kit, good_data, tmp_path):
    with pytest.raises(TrainingInputError, match="every prompt alone fills max_length=32"):
        train_dpo(make_config(tiny_kit, good_data, tmp_path, max_length=32))


# Config validation: the message states the rule, the value and the fix.


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"load_in_4bit": True, "bf16": False}, "load_in_4bit=True with bf16=False"),
        ({"max_lora_rank": 48}, r"--max-lora-rank .*got 48"),
        ({"beta": 0}, r"beta must be > 0; got 0"),
        ({"loss_type": "dpo"}, r"loss_type must be one of .*got 'dpo'"),
        ({"loss_type": "sigmoid+dpo"}, r"several joined by '\+'.*got 'sigmoid\+dpo'"),
        ({"label_smoothing": 0.5}, r"label_smoothing must be in \[0, 0.5\).*got 0.5"),
        ({"ld_alpha": 1.5}, r"ld_alpha must be in \[0, 1\] or None"),
        ({"max_steps": 0}, "max_steps must be a positive step count or -1"),
        ({"warmup": 3}, r"unknown DPOTrainConfig setting\(s\) \['warmup'\]; valid settings: "),
        ({"adapter_out": "/vol/adapters/a/1", "sft_adapter": "/vol/adapters/a/1"},
         "adapter_out must differ from sft_adapter"),
        ({"restart": "a b"}, r"restart must be '' or a label"),
    ],
)
def test_config_rejects_bad_values(overrides, message):
    with pytest.raises(ConfigError, match=message):
        DPOTrainConfig.from_overrides({"sft_adapter": "/vol/adapters/nothing-gpt/abc", **overrides})


def test_the_loss_types_are_the_ones_trl_computes():
    """DPO_LOSS_TYPES is validated against TRL itself: every `loss_type == "..."` branch of its loss."""
    import inspect
    import re

    from trl.trainer import dpo_trainer

    from training.config import DPO_LOSS_TYPES

    branches = set(re.findall(r'loss_type == "([a-z_]+)"', inspect.getsource(dpo_trainer)))
    assert set(DPO_LOSS_TYPES) == branches


@pytest.mark.parametrize(("overrides", "expected"), [
    ({"loss_type": "ipo"}, {"loss_type": ["ipo"], "label_smoothing": 0.0, "ld_alpha": None}),
    ({"loss_type": "robust", "label_smoothing": 0.1}, {"loss_type": ["robust"], "label_smoothing": 0.1}),
    ({"loss_type": "sigmoid+sft"}, {"loss_type": ["sigmoid", "sft"]}),
    ({"ld_alpha": 0.5}, {"loss_type": ["sigmoid"], "ld_alpha": 0.5}),
])
def test_loss_variants_reach_trl(overrides, expected, tmp_path):
    from training.dpo import _dpo_args

    config = DPOTrainConfig.cpu_test(fp32=True, sft_adapter="/s", data_dir=str(tmp_path), **overrides)
    args = _dpo_args(config, "none", tmp_path)
    assert {k: getattr(args, k) for k in expected} == expected


def test_a_changed_loss_is_another_run_and_an_unset_new_one_keeps_old_run_ids(tiny_kit, good_data, tmp_path):
    from training.resume import run_fingerprint

    plain = make_config(tiny_kit, good_data, tmp_path)
    fingerprints = {repr(o): run_fingerprint(make_config(tiny_kit, good_data, tmp_path, **o)) for o in (
        {}, {"loss_type": "sigmoid+sft"}, {"label_smoothing": 0.1}, {"ld_alpha": 0.5})}
    assert len(set(map(repr, fingerprints.values()))) == 4
    # Unset, the new loss settings leave the settings hash as it was before they existed: old checkpoints resume.
    import hashlib
    import json

    from training.resume import _FINGERPRINT_FIELDS

    before = {name: getattr(plain, name) for name in _FINGERPRINT_FIELDS}
    assert fingerprints["{}"]["settings_sha256"] == hashlib.sha256(
        json.dumps(before, sort_keys=True).encode()).hexdigest()


def test_no_sft_adapter_chosen_names_the_upload_command():
    config = DPOTrainConfig.from_overrides({"sft_adapter": ""})
    with pytest.raises(ConfigError, match=r"sft_adapter is not set.*upload --adapter DIR.*NGPT_SFT_ADAPTER"):
        config.require_sft_adapter()


def test_config_defaults_are_the_plan():
    c = DPOTrainConfig(sft_adapter="/vol/adapters/nothing-gpt/abc")
    plan = {
        "beta": 0.1, "loss_type": "sigmoid", "learning_rate": 5e-6, "num_train_epochs": 1.0,
        "per_device_train_batch_size": 4, "per_device_eval_batch_size": 2, "gradient_accumulation_steps": 4,
        "max_length": 2048, "bf16": True, "lr_scheduler_type": "cosine", "warmup_steps": 20,
        "logging_steps": 10, "eval_steps": 25, "save_steps": 25, "output_dir": "/vol/checkpoints/dpo",
        "adapter_out": "/vol/adapters/nothing-gpt-dpo", "load_in_4bit": True, "gradient_checkpointing": True,
    }
    assert {k: getattr(c, k) for k in plan} == plan
    assert all(c.help_text().values()), "every field has help text"


def test_servable_problems_lists_each_vllm_refusal():
    config = {"r": 64, "bias": "all", "modules_to_save": ["lm_head"], "use_dora": True}
    problems = " | ".join(servable_problems(config, 32))
    for fragment in ("rank 64", "bias is 'all'", "modules_to_save", "DoRA"):
        assert fragment in problems
    assert servable_problems({"r": 32, "bias": "none"}, 32) == []


def capture_at_start(store: dict):
    """The policy's and the reference's weights when training takes its first step."""
    from transformers import TrainerCallback

    class Capture(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            if "policy_at_start" not in store:
                store["policy_at_start"] = lora_weights(model.named_parameters(), "default")
                store["ref_at_start"] = lora_weights(model.named_parameters(), "ref")

    return Capture()


def test_a_later_round_starts_the_policy_from_init_adapter_with_the_sft_adapter_as_reference(
        first_run, tiny_kit, data_dir, tmp_path):
    """Rounds (issue 19): round k trains on from round k-1's adapter, against the SFT adapter as the frozen
    reference, in a run folder of its own."""
    first, _, _, _ = first_run
    store: dict = {}
    config = make_config(tiny_kit, data_dir, tmp_path, init_adapter=str(first.adapter_dir), max_steps=1,
                         save_steps=1, eval_steps=1)
    result = train_dpo(config, callbacks=[capture_at_start(store)])
    previous, sft = load_adapter_file(first.adapter_dir), load_adapter_file(tiny_kit.sft_adapter_dir)
    assert set(store["policy_at_start"]) == set(previous)
    for name, tensor in previous.items():
        assert store["policy_at_start"][name].equal(tensor.to(store["policy_at_start"][name].dtype)), name
        assert store["ref_at_start"][name].equal(sft[name]), f"the reference is not the SFT adapter: {name}"
    assert result.checkpoint_dir.name != first.checkpoint_dir.name  # another run, another folder
    assert json.loads((result.checkpoint_dir / "run.json").read_text())["init_adapter_sha256"] == \
        adapter_sha256(first.adapter_dir)


def test_init_adapter_that_is_the_sft_adapter_is_refused(tiny_kit, data_dir, tmp_path):
    with pytest.raises(ConfigError, match="init_adapter is the SFT adapter"):
        make_config(tiny_kit, data_dir, tmp_path, init_adapter=str(tiny_kit.sft_adapter_dir))
