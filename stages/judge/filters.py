"""Filters on judgments already in hand: changing one re-sorts the records, it never sends a request.

`--min-confidence` keeps a pair in the results only when its confidence (the lower of the two orders'
with --swap-check) reaches the threshold; below it the pair is a `low_confidence` skip with its full
record. Each judge run starts by re-sorting the records it has to the threshold it was given, so raising,
lowering or removing it takes effect on every row judged before, for free.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from engine.checkpoint import Checkpoint, atomic_write, read_records

log = logging.getLogger(__name__)

LOW_CONFIDENCE = "low_confidence"
RESULT_FIELDS = ("id", "input", "prompt", "chosen", "rejected", "judge")


def pair_confidence(judge: dict[str, Any]) -> int:
    """The confidence a filter compares: the judge's, or the lower of both orders' with --swap-check."""
    swap = judge.get("swap")
    return min(judge["confidence"], swap["confidence"]) if swap else judge["confidence"]


def passes(judge: dict[str, Any], min_confidence: int | None) -> bool:
    return min_confidence is None or pair_confidence(judge) >= min_confidence


def low_confidence_detail(judge: dict[str, Any], min_confidence: int | None) -> str:
    return f"confidence {pair_confidence(judge)} is below --min-confidence {min_confidence}"


def apply_min_confidence(checkpoint: Checkpoint, min_confidence: int | None) -> tuple[int, int]:
    """Re-sort the results and `low_confidence` skips to `min_confidence`; returns (moved out, moved back).

    Crash-safe: the file that gains records is replaced first, so a kill between the two replaces leaves a
    record in both files at worst; the next run resolves it (each id ends in exactly one file).
    """
    skipped_raw = checkpoint.skipped.read_bytes() if checkpoint.skipped.exists() else b""
    if min_confidence is None and b'"reason":"low_confidence"' not in skipped_raw:
        return 0, 0  # the common case: no filter and nothing filtered before: nothing to read
    results = read_records(checkpoint.results)
    skipped = read_records(checkpoint.skipped)
    in_results = {r["id"] for r in results}
    kept = [r for r in results if passes(r["judge"], min_confidence)]
    out = [r for r in results if not passes(r["judge"], min_confidence)]
    low = [r for r in skipped if r.get("reason") == LOW_CONFIDENCE]
    back = [r for r in low if r["id"] not in in_results and passes(r["judge"], min_confidence)]
    still_low = {r["id"] for r in low if not passes(r["judge"], min_confidence)}
    doubled = any(r.get("reason") == LOW_CONFIDENCE and r["id"] in in_results for r in skipped)
    if not out and not back and not doubled:
        return 0, 0
    new_results = kept + [{k: r[k] for k in RESULT_FIELDS if k in r} for r in back]
    back_ids = {r["id"] for r in back}
    new_skipped = [r for r in skipped
                   if r.get("reason") != LOW_CONFIDENCE or (r["id"] in still_low and r["id"] not in in_results)]
    new_skipped += [{"id": r["id"], "input": r.get("input"), "reason": LOW_CONFIDENCE,
                     "detail": low_confidence_detail(r["judge"], min_confidence),
                     **{k: r[k] for k in RESULT_FIELDS[2:]}} for r in out]
    # ^ a record moved back leaves the skipped file; one moved out is written there once
    assert not back_ids & {r["id"] for r in new_skipped if r.get("reason") == LOW_CONFIDENCE}
    writes = [(checkpoint.results, new_results), (checkpoint.skipped, new_skipped)]
    if not back:
        writes.reverse()  # moving out: the skipped file gains, so it is written first
    elif out:  # both ways (no consistent state leads here): both files gain first, then both lose
        writes = [(checkpoint.results, results + new_results[len(kept):]), (checkpoint.skipped, new_skipped),
                  (checkpoint.results, new_results)]
    for path, records in writes:
        atomic_write(path, b"".join(orjson.dumps(r) + b"\n" for r in records))
    if out or back:
        log.warning("--min-confidence %s: %d pair(s) moved to the skipped file, %d moved back to the results "
                    "(judged before; no request sent)", min_confidence, len(out), len(back))
    return len(out), len(back)
