"""Issue 27.2: on Modal the samples (the generate folder and every cache key that takes the model key) follow the
served SFT adapter's content hash, so a newly uploaded SFT adapter is never trained on the old one's samples."""

from __future__ import annotations

import dataclasses

import pytest

from steps.stage_io import stage_dir

OLD = "/vol/adapters/nothing-gpt/0123456789abcdef"
NEW = "/vol/adapters/nothing-gpt/fedcba9876543210"


def test_a_new_sft_adapter_gets_new_samples(tmp_path, monkeypatch):
    import infra.names
    from pipelines.pipeline import pipeline_parameters
    from targets.modal import sft_adapter_key

    assert sft_adapter_key(OLD) == "sft-adapter-0123456789abcdef" != sft_adapter_key(NEW)
    folders = {stage_dir(tmp_path, "generate", settings={"n": 3}, model=sft_adapter_key(f)) for f in (OLD, NEW)}
    assert len(folders) == 2  # the generate step's checkpoint folder is keyed by it
    with pytest.raises(ValueError, match="upload --adapter"):
        sft_adapter_key("")  # none chosen: never sample under an empty key
    with pytest.raises(ValueError, match="not a content-addressed"):
        sft_adapter_key("/vol/adapters/nothing-gpt")  # one folder overwritten in place: content unknown

    class Cfg:  # what pipeline_parameters reads of a modal PipelineConfig
        is_local, profile, prompts, limit = False, "modal", tmp_path / "p.jsonl", 1
        workdir = state_dir = tmp_path
        generate = generate_run = judge = judge_run = evaluate = evaluate_judge = train = None
        split = dataclasses.make_dataclass("S", [("val_fraction", float)])(0.1)
        deploy = dataclasses.make_dataclass("D", [("timeout_s", float), ("port", int)])(1.0, 0)
        evaluate_prompts, holdout_fraction = None, 0.0
        rounds = dataclasses.make_dataclass("R", [("arena_votes", str)])("")

    Cfg.prompts.write_text("{}\n")
    keys = []
    for folder in (OLD, NEW):
        monkeypatch.setattr(infra.names, "NAMES", dataclasses.replace(infra.names.NAMES, sft_adapter=folder))
        keys.append(pipeline_parameters(Cfg())["target"].model_key)
    assert keys == [sft_adapter_key(OLD), sft_adapter_key(NEW)]  # the old code passed "" for both
