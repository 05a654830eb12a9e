"""The split: a deterministic function of the prompt id, stable under added/removed rows, no leakage; and
the judge's files (nested "judge" column and all) load unchanged into TRL 1.16's DPOTrainer."""

from __future__ import annotations

import asyncio
import json

import orjson
import pytest

from engine.errors import ConfigError
from engine.options import RunOptions
from engine.rows import prompt_id
from pipelines.dpo import main
from stages.judge import JudgeSettings, run_judge
from stages.split import split_preferences
from tests.helpers import SAMPLE, read_jsonl


def pair(i: int, variant: int = 0) -> dict:
    prompt = [{"role": "system", "content": "brief"}, {"role": "user", "content": f"[JERRY] Scene {i}."}]
    return {"id": prompt_id(prompt), "prompt": prompt,
            "chosen": [{"role": "assistant", "content": f"[JERRY] good {i}.{variant}"}],
            "rejected": [{"role": "assistant", "content": f"[KRAMER] bad {i}.{variant}"}],
            "judge": {"confidence": 4, "ranking": [0, 2, 1], "swap": None}}


def write(path, rows: list[dict]) -> None:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))


def sides(out) -> dict[str, set[str]]:
    return {name: {prompt_id(r["prompt"]) for r in read_jsonl(out / f"{name}.jsonl")} for name in ("train", "val")}


def test_split_is_stable_when_rows_are_added_or_removed_and_copies_rows_byte_for_byte(tmp_path):
    rows = [pair(i) for i in range(1021)]
    write(tmp_path / "a.jsonl", rows)
    a = split_preferences(tmp_path / "a.jsonl", tmp_path / "a")
    assert a.n_train + a.n_val == 1021 and 72 <= a.n_val <= 132  # ~102 expected, binomial spread
    lines = set((tmp_path / "a.jsonl").read_bytes().splitlines())
    out_lines = (a.train_path.read_bytes() + a.val_path.read_bytes()).splitlines()
    assert sorted(out_lines) == sorted(lines)  # every row copied unchanged, none lost
    # drop 200 rows, add 300 new ones, shuffle the order: every surviving prompt stays on its side
    changed = rows[200:][::-1] + [pair(i) for i in range(5000, 5300)]
    write(tmp_path / "b.jsonl", changed)
    split_preferences(tmp_path / "b.jsonl", tmp_path / "b")
    before, after = sides(tmp_path / "a"), sides(tmp_path / "b")
    for side in ("train", "val"):
        assert before[side] - {prompt_id(r["prompt"]) for r in rows[:200]} <= after[side]
    manifest = orjson.loads((tmp_path / "a" / "split.json").read_bytes())
    assert (manifest["n_train"], manifest["n_val"]) == (a.n_train, a.n_val)


def test_no_prompt_is_on_both_sides_even_with_several_pairs_per_prompt(tmp_path):
    rows = [pair(i, v) for i in range(300) for v in range(3)]
    write(tmp_path / "p.jsonl", rows)
    result = split_preferences(tmp_path / "p.jsonl", tmp_path / "s", val_fraction=0.3)
    s = sides(tmp_path / "s")
    assert not s["train"] & s["val"] and len(s["train"] | s["val"]) == 300
    assert result.n_val % 3 == 0 and result.n_train % 3 == 0  # a prompt's pairs move together


def test_tiny_inputs_still_get_both_sides_and_bad_rows_are_named(tmp_path):
    write(tmp_path / "tiny.jsonl", [pair(i) for i in range(3)])
    tiny = split_preferences(tmp_path / "tiny.jsonl", tmp_path / "t", val_fraction=0.01)
    assert tiny.n_train >= 1 and tiny.n_val >= 1
    bad = [pair(0), {"prompt": "p", "chosen": "same", "rejected": "same"}, {"prompt": "p", "chosen": ["x"]}]
    path = tmp_path / "bad.jsonl"
    write(path, bad)
    with pytest.raises(ConfigError) as e:
        split_preferences(path, tmp_path / "x")
    assert f"{path}:2: \"chosen\" equals \"rejected\"" in str(e.value)
    assert f"{path}:3: " in str(e.value)
    with pytest.raises(ConfigError, match="val_fraction must be between 0 and 1"):
        split_preferences(tmp_path / "tiny.jsonl", tmp_path / "t", val_fraction=1.0)


def test_cli_split_and_estimate(tmp_path, capsys):
    write(tmp_path / "p.jsonl", [pair(i) for i in range(50)])
    assert main(["split", "--preferences", str(tmp_path / "p.jsonl"), "--out", str(tmp_path / "s")]) == 0
    assert "split: " in capsys.readouterr().err
    assert (tmp_path / "s" / "train.jsonl").exists() and (tmp_path / "s" / "val.jsonl").exists()
    comp = tmp_path / "c.jsonl"
    write(comp, [{"prompt": r["prompt"], "completions": ["a", "b", "c"]} for r in [pair(i) for i in range(5)]])
    assert main(["estimate", "--completions", str(comp), "--judge-model", "gpt-5", "--swap-check"]) == 0
    printed = capsys.readouterr().out
    assert "requests: 10" in printed and "How the tokens were counted" in printed
    assert main(["estimate", "--completions", str(comp), "--judge-model", "mystery-model"]) == 2
    assert "no price is known" in capsys.readouterr().err


def test_judge_and_split_files_load_unchanged_into_trl_dpo_trainer(tmp_path, tiny_kit):
    """Reference-judge the sample prompts, split, and run one DPO step on the raw files (eval set prepared too)."""
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    sample = read_jsonl(SAMPLE)
    refs = [r["completion"][0]["content"] for r in sample]
    comp = tmp_path / "completions.jsonl"
    write(comp, [{"prompt": r["prompt"], "reference": refs[i],
                  "completions": [refs[i][:200], refs[(i + 1) % len(refs)][:200], refs[(i + 2) % len(refs)][:200]]}
                 for i, r in enumerate(sample)])
    summary = asyncio.run(run_judge(comp, tmp_path / "judge", JudgeSettings(backend="reference"),
                                    RunOptions(progress=False)))
    assert summary.succeeded == len(sample)
    split = split_preferences(tmp_path / "judge" / "preferences.jsonl", tmp_path / "split", val_fraction=0.2)
    files = {"train": str(split.train_path), "test": str(split.val_path)}
    data = load_dataset("json", data_files=files)
    assert {"prompt", "chosen", "rejected", "judge"} <= set(data["train"].column_names)
    tokenizer = AutoTokenizer.from_pretrained(tiny_kit.base_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_kit.base_dir)
    args = DPOConfig(
        output_dir=str(tmp_path / "dpo"), max_steps=1, per_device_train_batch_size=2, per_device_eval_batch_size=4,
        max_length=256, bf16=False, use_cpu=True, gradient_checkpointing=False,  # CPU, fp32, tiny
        report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True,
    )
    trainer = DPOTrainer(model=model, args=args, train_dataset=data["train"], eval_dataset=data["test"],
                         processing_class=tokenizer)
    assert len(trainer.train_dataset) == split.n_train and "chosen_ids" in trainer.train_dataset.column_names
    assert len(trainer.eval_dataset) == split.n_val and "rejected_ids" in trainer.eval_dataset.column_names
    trainer.train()
    logged = trainer.state.log_history[0]
    assert "rewards/accuracies" in logged and logged["loss"] > 0


def test_the_holdout_and_the_sample_side_partition_the_prompt_file(tmp_path):
    """The A/B's hold-out (configs/local.yaml holdout_fraction) is exactly the rows the sample side skips, by a
    hash of the prompt with its own salt; a row that is not valid JSON stays on the sample side (the generate
    stage reports it there, nothing is dropped)."""
    from engine.rows import prompt_id
    from stages.split import HOLDOUT_SALT, split_value
    from steps.prompts import write_subset

    source = tmp_path / "prompts.jsonl"
    rows = [{"prompt": f"scene {i}"} for i in range(200)]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")
    sample, holdout = tmp_path / "sample.jsonl", tmp_path / "holdout.jsonl"
    write_subset(source, sample, limit=None, holdout_fraction=0.2, side="sample")
    write_subset(source, holdout, limit=None, holdout_fraction=0.2, side="holdout")
    sampled, held = sample.read_text().splitlines(), holdout.read_text().splitlines()
    assert sampled[-1] == "{not json" and len(sampled) + len(held) == 201
    assert {json.loads(x)["prompt"] for x in held}.isdisjoint(json.loads(x)["prompt"] for x in sampled[:-1])
    assert all(split_value(prompt_id(json.loads(x)["prompt"]), HOLDOUT_SALT) < 0.2 for x in held)
    assert 25 <= len(held) <= 55  # about a fifth
    # the limit counts sample-side rows only, and keeps file order
    first = tmp_path / "first.jsonl"
    kept, _ = write_subset(source, first, limit=10, holdout_fraction=0.2, side="sample")
    assert kept == 10 and first.read_text().splitlines() == sampled[:10]
    # no hold-out: the first rows as they are
    kept, skipped = write_subset(source, first, limit=5, holdout_fraction=0.0, side="sample")
    assert (kept, skipped) == (5, 0) and first.read_text().splitlines() == [json.dumps(r) for r in rows[:5]]
