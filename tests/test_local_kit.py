"""training/local_kit.py: the model key names the kit, and a kit changed since launch is refused; the SFT
adapter both kits build is seeded (a rebuild is bit for bit the same)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from training import local_kit


@dataclass(frozen=True)
class _Kit:
    base_dir: Path
    sft_adapter_dir: Path
    key: str


def test_the_model_key_names_the_kit_and_a_changed_kit_is_refused(monkeypatch, tmp_path):
    import training.smol
    import training.tiny

    tiny, smol = _Kit(tmp_path / "t", tmp_path / "ts", "aaa"), _Kit(tmp_path / "s", tmp_path / "ss", "bbb")
    monkeypatch.setattr(training.tiny, "ensure_tiny_kit", lambda: tiny)
    monkeypatch.setattr(training.smol, "ensure_smol_kit", lambda: smol)
    assert local_kit.ensure_local_kit("tiny-kit:aaa") is tiny
    assert local_kit.ensure_local_kit("") is tiny  # older runs' steps
    assert local_kit.ensure_local_kit("smollm2-kit:bbb") is smol
    with pytest.raises(RuntimeError, match="launched for the smollm2 kit old, but the kit is now bbb"):
        local_kit.ensure_local_kit("smollm2-kit:old")
    with pytest.raises(ValueError, match="local_model must be one of smollm2, tiny, got 'big'"):
        local_kit.ensure_local_kit("big-kit:x")


def test_the_sft_adapter_is_seeded_whatever_the_random_state_before(tiny_kit, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.tiny import _sample_rows, train_sft_adapter

    tokenizer = AutoTokenizer.from_pretrained(tiny_kit.base_dir)
    weights = []
    for run in (1, 2):
        torch.manual_seed(run)  # a different random state before each build
        model = AutoModelForCausalLM.from_pretrained(tiny_kit.base_dir)
        out = tmp_path / f"sft-{run}"
        train_sft_adapter(model, tokenizer, _sample_rows(), out=out, work=tmp_path / f"work-{run}",
                          final_base=tiny_kit.base_dir)
        weights.append((out / "adapter_model.safetensors").read_bytes())
    assert weights[0] == weights[1]
