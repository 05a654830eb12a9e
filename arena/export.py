"""`arena export`: decided votes become TRL preference rows `{prompt, chosen, rejected}` for `split` and `train`.

A "left" or "right" vote makes one pair: the voter's pick is `chosen`, the other answer `rejected`, as
assistant message lists (the prompt is a message list), with the vote recorded under `"arena"`. Ties and
"both bad" make no pair but are counted. Every row passes the one preference-row check the split stage and
training apply (`infra.preference_rows`); a decided vote that fails it (two identical answers) is left out and
counted by reason. The votes file is only read: a torn last line (a vote being written, or a kill) is
reported and left out; a damaged line elsewhere stops the export naming file:line.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from arena.votes import VOTES, Tally, outcome
from engine.checkpoint import atomic_write
from engine.errors import ConfigError
from infra.preference_rows import check_preference_row

log = logging.getLogger(__name__)

PREFERENCES = "preferences.jsonl"
SUMMARY = "export.json"
REQUIRED = ("id", "vote", "baseline", "challenger", "prompt", "left", "right")


@dataclass(frozen=True)
class ExportResult:
    preferences: Path
    summary: Path
    votes: int
    pairs: int
    ties: int
    both_bad: int
    left_out: dict[str, int] = field(default_factory=dict)  # decided votes that made no pair, by reason
    duplicates: int = 0
    torn_tail: bool = False
    tallies: list[dict[str, Any]] = field(default_factory=list)

    def render(self) -> str:
        lines = [f"arena export: {self.votes} votes -> {self.pairs} preference pairs "
                 f"({self.ties} ties, {self.both_bad} both bad: counted, not pairs)"]
        lines += [f"  left out: {n} ({reason})" for reason, n in sorted(self.left_out.items())]
        if self.duplicates:
            lines.append(f"  duplicate vote ids skipped: {self.duplicates}")
        if self.torn_tail:
            lines.append("  the last line was incomplete (a vote being written, or a kill) and was left out")
        for t in self.tallies:
            w = t["win_rate"]
            rate = "n/a" if w["win_rate_all"] is None else f"{w['win_rate_all']:.1%}"
            lines.append(f"  {t['challenger']} vs {t['baseline']}: {w['wins']} wins, {w['losses']} losses, "
                         f"{w['ties']} ties; win rate {rate} (95% interval {w['ci95_all'][0]:.1%}-"
                         f"{w['ci95_all'][1]:.1%}, ties half)")
        lines += [f"  {self.preferences}", f"  {self.summary}"]
        return "\n".join(lines)


def export_votes(votes_path: Path, out_dir: Path) -> ExportResult:
    """Write out_dir/preferences.jsonl and out_dir/export.json from a votes file."""
    votes_path, out_dir = Path(votes_path), Path(out_dir)
    records, torn = read_votes(votes_path)
    seen: set[str] = set()
    rows: list[bytes] = []
    counts: Counter[str] = Counter()
    left_out: Counter[str] = Counter()
    tallies: dict[tuple[str, str], Counter[str]] = {}
    duplicates = 0
    for record in records:
        if record["id"] in seen:
            duplicates += 1
            continue
        seen.add(record["id"])
        counts[record["vote"]] += 1
        tallies.setdefault((record["baseline"], record["challenger"]), Counter())[outcome(record)] += 1
        if record["vote"] in ("tie", "both_bad"):
            continue
        row = preference_row(record)
        try:
            check_preference_row(row)
        except ValueError as e:
            left_out[str(e)] += 1
            continue
        rows.append(orjson.dumps(row) + b"\n")
    out_dir.mkdir(parents=True, exist_ok=True)
    result = ExportResult(
        preferences=out_dir / PREFERENCES, summary=out_dir / SUMMARY, votes=len(seen), pairs=len(rows),
        ties=counts["tie"], both_bad=counts["both_bad"], left_out=dict(left_out), duplicates=duplicates,
        torn_tail=torn,
        tallies=[Tally(b, c, n["win"], n["loss"], n["tie"], n["both_bad"]).to_dict() for (b, c), n in tallies.items()],
    )
    atomic_write(result.preferences, b"".join(rows))
    summary = {k: v for k, v in result.__dict__.items() if k not in ("preferences", "summary")}
    atomic_write(result.summary, orjson.dumps({
        "votes_file": str(votes_path), "votes_sha256": hashlib.sha256(votes_path.read_bytes()).hexdigest(),
        "preferences": str(result.preferences), **summary,
        "rule": "a left/right vote is a pair (chosen = the voter's pick); ties and both-bad votes are counted only",
    }, option=orjson.OPT_INDENT_2))
    log.info("exported %d pairs from %d votes to %s", result.pairs, result.votes, result.preferences)
    return result


def preference_row(record: dict[str, Any]) -> dict[str, Any]:
    """The TRL preference row for a left/right vote, with the vote under "arena"."""
    picked = record["vote"]
    other = "right" if picked == "left" else "left"
    prompt = record["prompt"]

    def turn(text: str) -> Any:
        return [{"role": "assistant", "content": text}] if isinstance(prompt, list) else text

    return {
        "id": record["id"],
        "prompt": prompt,
        "chosen": turn(record[picked]["text"]),
        "rejected": turn(record[other]["text"]),
        "arena": {
            "vote": picked,
            "chosen_model": record[picked]["model"],
            "rejected_model": record[other]["model"],
            "shown": {"left": record["left"]["model"], "right": record["right"]["model"]},
            "source": record.get("source"),
            "prompt_id": record.get("prompt_id"),
            "session": record.get("session"),
            "voted_at": record.get("voted_at"),
            "sampling": record.get("sampling"),
        },
    }


def read_votes(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """Every complete vote in `path`, and whether an incomplete last line was left out."""
    if not path.is_file():
        raise ConfigError(f"votes file {path} does not exist; vote in `python -m pipelines.dpo arena --votes {path}` "
                          "first, or pass the file it wrote")
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    torn = bool(data[end:].strip())
    if torn:
        log.warning("%s: the last line is incomplete (a vote being written, or a kill); left out", path)
    records = []
    for lineno, raw in enumerate(data[:end].split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise ConfigError(f"{path}:{lineno}: not a JSON vote ({e}); the file was edited or damaged: fix or "
                              "delete that line") from e
        missing = [k for k in REQUIRED if k not in record] if isinstance(record, dict) else list(REQUIRED)
        if missing or record["vote"] not in VOTES:
            raise ConfigError(f"{path}:{lineno}: not an arena vote (missing {missing}, vote {record.get('vote')!r} "
                              f"must be one of {VOTES}); fix or delete that line")
        records.append(record)
    return records, torn
