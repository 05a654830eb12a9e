"""The QLoRA path on the CPU: a 4-bit NF4 base, the policy adapter trained in fp32, the reference untouched.

TRL 1.16 casts the trainable adapter to bf16 under a quantized base (../shared/NOTES.md, "QLoRA trap"); at
the plan's learning rate most updates then round away. `train_dpo` puts the fp32 values back. These tests
train a few steps at lr 5e-6 on the real 4-bit path and measure how many adapter entries moved, with the
fix and with it switched off (the floor below must tell the two apart).
"""

from __future__ import annotations

import pytest

import training.dpo as dpo
from tests.test_training import load_adapter_file, make_config
from training.tiny import write_sample_preferences

PLAN_LR = 5e-6  # the plan's learning rate (DPOTrainConfig's default)
STEPS = 3
MOVED_FLOOR = 0.9  # share of adapter entries that must change; measured 1.0 with the fix, ~0.05 without


def _capture(store: dict):
    import bitsandbytes as bnb
    from transformers import TrainerCallback

    def adapter(model, name: str) -> dict:
        return {n.replace(f".{name}.", "."): p.detach().clone() for n, p in model.named_parameters()
                if "lora_" in n and f".{name}." in n}

    class Capture(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            store["begin_policy"], store["begin_ref"] = adapter(model, "default"), adapter(model, "ref")
            store["policy_dtypes"] = {p.dtype for n, p in model.named_parameters() if p.requires_grad}
            store["linear4bit"] = sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())

        def on_train_end(self, args, state, control, model=None, **kwargs):
            store["end_policy"], store["end_ref"] = adapter(model, "default"), adapter(model, "ref")

    return Capture()


def _train(kit, tmp_path, *, restore: bool, monkeypatch) -> dict:
    if not restore:
        monkeypatch.setattr(dpo, "_restore_trainable", lambda model, snapshot: None)  # TRL's bf16 cast stays
    store: dict = {}
    config = make_config(kit, write_sample_preferences(tmp_path / "pairs"), tmp_path, max_steps=STEPS,
                         learning_rate=PLAN_LR, save_steps=1000, eval_steps=1000)
    assert config.load_in_4bit and config.bf16 and config.use_cpu  # the local default is the L4's QLoRA path
    store["result"] = dpo.train_dpo(config, callbacks=[_capture(store)])
    return store


def _moved(before: dict, after: dict) -> float:
    """The share of entries whose value changed between two snapshots of one adapter."""
    changed = sum(int((after[n].float() != t.float()).sum()) for n, t in before.items())
    return changed / sum(t.numel() for t in before.values())


def test_policy_moves_in_fp32_and_reference_stays_the_sft_adapter(tiny_kit, tmp_path, monkeypatch, record_property):
    import torch

    store = _train(tiny_kit, tmp_path, restore=True, monkeypatch=monkeypatch)
    sft = load_adapter_file(tiny_kit.sft_adapter_dir)
    assert store["linear4bit"] > 0, "the base was not loaded in 4-bit"
    assert store["policy_dtypes"] == {torch.float32}
    # Step 0: the policy is exactly the reference, and both are exactly the SFT adapter.
    for name, tensor in sft.items():
        assert store["begin_policy"][name].equal(tensor), f"policy != SFT adapter at step 0: {name}"
        assert store["end_ref"][name].equal(tensor), f"the reference adapter changed: {name}"
    moved = _moved(store["begin_policy"], store["end_policy"])
    record_property("moved_fraction", moved)
    print(f"fraction of policy entries moved after {STEPS} steps at lr {PLAN_LR}: {moved:.3f}")
    assert moved >= MOVED_FLOOR
    saved = load_adapter_file(store["result"].adapter_dir)  # what vLLM will load
    assert all(saved[n].equal(store["end_policy"][n]) for n in saved)


def test_without_the_fp32_restore_the_floor_fails(tiny_kit, tmp_path, monkeypatch):
    """TRL's bf16 cast left alone: most entries freeze, so the floor above would catch a broken fix."""
    import torch

    store = _train(tiny_kit, tmp_path, restore=False, monkeypatch=monkeypatch)
    sft = load_adapter_file(tiny_kit.sft_adapter_dir)
    assert store["policy_dtypes"] == {torch.bfloat16}
    assert not all(store["begin_policy"][n].float().equal(t) for n, t in sft.items())  # starts off the reference
    moved = _moved(store["begin_policy"], store["end_policy"])  # entries the optimizer changed
    print(f"without the restore: {moved:.3f} of entries moved")
    assert moved < MOVED_FLOOR


def test_fp32_debugging_path_is_a_flag():
    from training.config import DPOTrainConfig

    assert not DPOTrainConfig.cpu_test(fp32=True).load_in_4bit
    assert not DPOTrainConfig.cpu_test(fp32=True).bf16
    with pytest.raises(ValueError, match="needs bf16=True"):
        DPOTrainConfig.cpu_test(bf16=False)
