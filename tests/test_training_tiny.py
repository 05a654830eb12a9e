"""The tiny model kit: a real model folder that transformers and PEFT load, cached and built atomically."""

from __future__ import annotations

import json

import pytest

import training.tiny as tiny


def test_kit_is_a_loadable_model_with_chat_template_and_adapters(tiny_kit):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_kit.base_dir)
    assert tokenizer.eos_token == "<|eot_id|>" and tokenizer.pad_token is not None
    assert 1000 <= len(tokenizer) <= 2048
    messages = [{"role": "user", "content": "[JERRY] What's the deal with airline food?"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text  # byte-level BPE: any text round-trips

    base = AutoModelForCausalLM.from_pretrained(tiny_kit.base_dir)
    assert base.config.model_type == "llama" and base.config.num_hidden_layers == 2
    model = PeftModel.from_pretrained(base, tiny_kit.sft_adapter_dir, adapter_name="seinfeld")
    model.load_adapter(str(tiny_kit.dpo_adapter_dir), adapter_name="seinfeld-dpo")
    for adapter_dir in (tiny_kit.sft_adapter_dir, tiny_kit.dpo_adapter_dir):
        config = json.loads((adapter_dir / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == str(tiny_kit.base_dir)
        assert config["bias"] == "none" and not config.get("modules_to_save")
        assert sorted(config["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    sft_b = model.base_model.model.model.layers[0].self_attn.q_proj.lora_B
    assert sft_b["seinfeld"].weight.abs().sum() > 0  # the SFT run moved B away from its zero init
    assert not sft_b["seinfeld"].weight.equal(sft_b["seinfeld-dpo"].weight)

    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > prompt["input_ids"].shape[1]


def test_second_call_uses_the_cache(tiny_kit, monkeypatch):
    monkeypatch.setattr(tiny, "_build", lambda *a, **k: pytest.fail("rebuilt a cached kit"))
    assert tiny.ensure_tiny_kit(tiny_kit.root.parent) == tiny_kit


def test_cache_dir_from_environment(tiny_kit, monkeypatch):
    monkeypatch.setenv(tiny.CACHE_ENV, str(tiny_kit.root.parent))
    monkeypatch.setattr(tiny, "_build", lambda *a, **k: pytest.fail("rebuilt a cached kit"))
    assert tiny.ensure_tiny_kit().root == tiny_kit.root


def test_interrupted_build_leaves_no_kit(tmp_path, monkeypatch):
    def half_build(tmp, final_root):
        (tmp / "base").mkdir()
        (tmp / "base" / "config.json").write_text("{}")
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of the SFT run

    monkeypatch.setattr(tiny, "_build", half_build)
    with pytest.raises(KeyboardInterrupt):
        tiny.ensure_tiny_kit(tmp_path)
    # neither a kit folder nor a leftover build folder (the build lock's file stays: it is only ever locked)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def test_recipe_change_changes_the_key(monkeypatch):
    before = tiny.kit_key()
    monkeypatch.setitem(tiny.RECIPE, "vocab_size", 2048)
    assert tiny.kit_key() != before
