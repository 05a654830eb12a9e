"""Shared fixtures. `tiny_kit`: the tiny Llama base, SFT and DPO adapters (built once, cached in .cache/tiny-kit)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_kit():
    """The tiny model kit (training.tiny.TinyKit): `base_dir`, `sft_adapter_dir`, `dpo_adapter_dir`."""
    from training.tiny import ensure_tiny_kit

    return ensure_tiny_kit()
