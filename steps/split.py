"""Step: split the preference pairs into train and validation sets (stages/split.py, by prompt hash)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import orjson
from zenml import ArtifactConfig, log_metadata, step

from steps.names import Artifact
from steps.records import JsonlFile
from steps.scratch import scratch_dir

logger = logging.getLogger(__name__)


@step
def split_dataset(
    preferences: JsonlFile,
    val_fraction: float = 0.1,
) -> tuple[
    Annotated[JsonlFile, ArtifactConfig(name=Artifact.TRAIN_SET)],
    Annotated[JsonlFile, ArtifactConfig(name=Artifact.VAL_SET)],
]:
    """Split by a hash of each prompt: stable as rows come and go, both pairs of a prompt on one side."""
    from stages.split import split_preferences

    out_dir = scratch_dir("split-")  # removed once ZenML has stored train_set and val_set
    result = split_preferences(preferences.path, out_dir, val_fraction)
    logger.info("%s", result.render())
    log_metadata(metadata={"n_train": result.n_train, "n_val": result.n_val, "val_fraction": val_fraction})
    return JsonlFile.of(result.train_path), JsonlFile.of(result.val_path)


@step
def merge_preferences(
    preferences: JsonlFile,
    earlier: JsonlFile,
) -> Annotated[JsonlFile, ArtifactConfig(name=Artifact.PREFERENCES_ALL)]:
    """Rounds with `data: all`: this round's pairs followed by an earlier round's, byte for byte (the split then
    puts every pair of a prompt on one side, whichever round it came from)."""
    out = scratch_dir("merge-") / "preferences.jsonl"
    with open(out, "wb") as dst:
        for part in (preferences, earlier):
            data = part.path.read_bytes()
            dst.write(data if not data or data.endswith(b"\n") else data + b"\n")
    merged = JsonlFile.of(out)
    log_metadata(metadata={"rows": merged.rows, "this_round": preferences.rows, "earlier": earlier.rows})
    return merged


@step
def add_arena_pairs(
    preferences: JsonlFile,
    votes_file: str,
    votes_sha256: str,
    prompts_file: str,  # noqa: ARG001 - the hold-out's file: part of the cache key with holdout_fraction
    holdout_fraction: float = 0.0,
    evaluate_prompts: str | None = None,
) -> Annotated[JsonlFile, ArtifactConfig(name=Artifact.PREFERENCES_WITH_ARENA)]:
    """The arena's decided votes (`arena export`) joined to the judged pairs, each marked `"source": "arena"`.

    A vote on a prompt the A/B evaluates on (the hold-out of `prompts_file`, or `evaluate_prompts`) is left
    out and counted: training on it would let DPO see the prompts it is judged on. `votes_sha256` (taken at
    launch) makes the cache follow the votes file; a file changed since is refused."""
    from engine.rows import file_sha256

    votes = Path(votes_file)
    if file_sha256(votes) != votes_sha256:
        raise RuntimeError(f"{votes} changed after the run was launched; launch the run again")
    out = scratch_dir("with-arena-") / "preferences.jsonl"
    joined, evaluated, voted = join_arena_pairs(preferences.path, votes, out,
                                                holdout_fraction=holdout_fraction,
                                                evaluate_prompts=Path(evaluate_prompts) if evaluate_prompts else None)
    logger.info("arena: %d vote pair(s) joined, %d left out (on prompts the A/B evaluates), from %s",
                joined, evaluated, votes)
    log_metadata(metadata={"arena_pairs": joined, "arena_left_out_evaluated_prompts": evaluated,
                           "arena_votes": voted, "judged_pairs": preferences.rows})
    return JsonlFile.of(out)


def join_arena_pairs(preferences: Path, votes: Path, out: Path, *, holdout_fraction: float,
                     evaluate_prompts: Path | None) -> tuple[int, int, int]:
    """Write `preferences` and then the votes' pairs (marked `"source": "arena"`) into `out`, leaving out a vote
    on a prompt the A/B evaluates on; returns (pairs joined, pairs left out, votes read)."""
    from arena.export import export_votes
    from engine.rows import prompt_id
    from stages.split import HOLDOUT_SALT, split_value

    exported = export_votes(votes, scratch_dir("arena-"))
    judged_on: set[str] = set()
    if evaluate_prompts is not None:
        judged_on = {prompt_id(orjson.loads(line)["prompt"])
                     for line in evaluate_prompts.read_bytes().splitlines() if line.strip()}
    kept, evaluated = [], 0
    for line in exported.preferences.read_bytes().splitlines():
        row = orjson.loads(line)
        pid = prompt_id(row["prompt"])
        if pid in judged_on or (holdout_fraction and split_value(pid, HOLDOUT_SALT) < holdout_fraction):
            evaluated += 1
            continue
        kept.append(orjson.dumps({**row, "source": "arena"}) + b"\n")
    data = preferences.read_bytes()
    out.write_bytes(data + (b"" if not data or data.endswith(b"\n") else b"\n") + b"".join(kept))
    return len(kept), evaluated, exported.votes
