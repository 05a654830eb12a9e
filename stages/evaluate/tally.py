"""Count an A/B judging run: wins, losses, ties, win rates with Wilson 95% intervals, order agreement, lengths.

Read from the judge stage's files (every pair judged in both orders):
- preferences.jsonl: both orders agreed; the challenger won when it is the chosen one (index 1), else it lost;
- preferences.skipped.jsonl: `swap_disagreement` (the orders disagree) and `fewer_than_two_distinct` (the two
  texts are the same, or empty) are ties; any other skip is a tie too, counted under its reason.
Errors (preferences.errors.jsonl) are not results: a rerun judges those pairs again.
And from the evaluation's forfeits.jsonl (prompts a model answered only blank, never sent to the judge): a loss
for the model that could not answer, a tie (`both_forfeited`) when neither could. So a model that answers
many prompts blank loses them, and fails a gate.

Only a complete A/B is a verdict: `complete` when every prompt has a result (no prompt left unpaired by the
sampling, every pair in the judge's input judged). An interrupted or failed-in-part run is a count so far, not a
verdict: its `passed` (and its gate's) is None, and a rerun resumes it from the checkpoints, then decides.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.checkpoint import atomic_write, read_records
from stages.evaluate.winrate import WinRate

CHALLENGER = 1  # index of the challenger's text in a pair's completions (the baseline is 0)
FORFEIT_SIDES = ("baseline", "challenger", "both")  # who could not answer, as forfeits.jsonl says
BOTH_FORFEITED = "both_forfeited"  # the tie reason of a prompt neither model answered
QUOTE_CHARS = 600


@dataclass(frozen=True)
class EvalResult:
    """The A/B result, JSON-ready with to_dict()."""

    baseline: str
    challenger: str
    wins: int
    losses: int
    ties: int
    ties_by_reason: dict[str, int]
    win_rate: dict[str, Any]  # stages.evaluate.winrate.WinRate.to_dict()
    order_agreement: float | None  # share of pairs where both orders gave the same verdict
    mean_chars: dict[str, float | None]  # baseline, challenger, winner, loser (decided pairs)
    longer_wins: float | None  # share of decided pairs won by the longer text (length bias)
    pairs: int  # pairs in the judge's input
    judged: int  # prompts with a result (win, loss or tie): the judge's and the forfeits
    cost_usd: float  # judge spend over every judged pair, all runs
    worst_losses: list[dict[str, Any]] = field(default_factory=list)
    # Prompts decided without the judge because a model answered only blank, by who could not answer: a loss for
    # that side (baseline: a win for the challenger), both: a tie. Counted in wins, losses and ties above.
    forfeits: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FORFEIT_SIDES, 0))
    forfeit_examples: list[dict[str, Any]] = field(default_factory=list)  # quoted in the report, with the reason
    judge_backend: str | None = None
    judge_model: str | None = None
    gate: dict[str, Any] | None = None  # {"min_win_rate", "lower_bound", "passed"} when a gate is set
    complete: bool = False  # every prompt has a result: only then is the count a verdict
    # The verdict: None while incomplete (a rerun finishes the set, then decides); when complete, the gate's
    # (True with no gate set: nothing to fail).
    passed: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def lower_bound(self) -> float:
        """The lower end of the 95% interval of the win rate over all pairs (ties count half)."""
        return float(self.win_rate["ci95_all"][0])

    def headline(self) -> str:
        w = self.win_rate
        rate = "n/a" if w["win_rate_all"] is None else f"{w['win_rate_all']:.1%}"
        lo, hi = w["ci95_all"]
        forfeited = sum(self.forfeits.values())
        by_forfeit = f" ({forfeited} by forfeit: a model answered only blank)" if forfeited else ""
        return (f"{self.challenger} beats {self.baseline} in {self.wins}, loses {self.losses}, ties {self.ties} "
                f"of {self.judged} pairs{by_forfeit}: win rate {rate} (95% Wilson interval {lo:.1%}-{hi:.1%}, "
                "ties half)")


def tally(judge_dir: Path, settings: Any, pairs_path: Path, forfeits_path: Path | None = None, *,
          sampled: bool = True) -> EvalResult:
    """EvalResult from the judge's output files in `judge_dir` and the forfeits (`settings`: EvaluateSettings).

    Complete only when `sampled` (every prompt final for both models: answered or forfeited) and every pair in
    the judge's input has a judgment; anything less is a count so far, not a verdict.
    """
    agreed = read_records(judge_dir / "preferences.jsonl")
    skipped = read_records(judge_dir / "preferences.skipped.jsonl")
    pairs = {r["id"]: r for r in read_records(pairs_path)}
    forfeited = read_records(forfeits_path) if forfeits_path is not None else []
    wins, losses, ties_by_reason = [], [], {}
    for row in agreed:
        (wins if row["judge"]["chosen_index"] == CHALLENGER else losses).append(row)
    for row in skipped:
        reason = row.get("reason", "unknown")
        ties_by_reason[reason] = ties_by_reason.get(reason, 0) + 1
    both_orders = len(agreed) + ties_by_reason.get("swap_disagreement", 0)
    forfeits = dict.fromkeys(FORFEIT_SIDES, 0)
    for row in forfeited:
        forfeits[row["forfeit"]] += 1
    if forfeits["both"]:
        ties_by_reason[BOTH_FORFEITED] = forfeits["both"]
    ties = sum(ties_by_reason.values())
    won, lost = len(wins) + forfeits["baseline"], len(losses) + forfeits["challenger"]
    base_len, chal_len, win_len, lose_len, longer_won = [], [], [], [], []
    for row in agreed + skipped:
        texts = pairs.get(row["id"], {}).get("completions")
        if texts:
            base_len.append(len(texts[0]))
            chal_len.append(len(texts[1]))
    for row in agreed:
        texts = pairs.get(row["id"], {}).get("completions")
        if not texts:
            continue
        winner = row["judge"]["chosen_index"]
        win_len.append(len(texts[winner]))
        lose_len.append(len(texts[1 - winner]))
        if len(texts[0]) != len(texts[1]):
            longer_won.append(len(texts[winner]) > len(texts[1 - winner]))
    rate = WinRate(won, lost, ties)
    judge_meta = next((r["judge"] for r in agreed if "judge" in r), None) or next(
        (r["judge"] for r in skipped if isinstance(r.get("judge"), dict)), {})
    judged_ids = {r["id"] for r in agreed + skipped}
    complete = sampled and all(row_id in judged_ids for row_id in pairs)
    gate = passed = None
    if settings.min_win_rate is not None:
        lower = rate.interval_all[0]
        passed = lower >= settings.min_win_rate if complete else None
        gate = {"min_win_rate": settings.min_win_rate, "lower_bound": round(lower, 4), "passed": passed}
    elif complete:
        passed = True
    return EvalResult(
        baseline=settings.baseline,
        challenger=settings.challenger,
        wins=won,
        losses=lost,
        ties=ties,
        ties_by_reason=ties_by_reason,
        win_rate=rate.to_dict(),
        order_agreement=round(len(agreed) / both_orders, 4) if both_orders else None,
        mean_chars={"baseline": _mean(base_len), "challenger": _mean(chal_len), "winner": _mean(win_len),
                    "loser": _mean(lose_len)},
        longer_wins=round(sum(longer_won) / len(longer_won), 4) if longer_won else None,
        pairs=len(pairs),
        judged=rate.total,
        cost_usd=round(sum(_cost(r) for r in agreed + skipped), 6),
        worst_losses=_worst(losses, pairs, settings.worst_losses),
        judge_backend=judge_meta.get("backend"),
        judge_model=judge_meta.get("model"),
        gate=gate,
        complete=complete,
        passed=passed,
        forfeits=forfeits,
        forfeit_examples=[_forfeit(row) for row in sorted(  # the challenger's first: the model under test
            forfeited, key=lambda r: ("challenger", "both", "baseline").index(r["forfeit"]))[:settings.worst_losses]],
    )


def _forfeit(row: dict[str, Any]) -> dict[str, Any]:
    """One forfeit quoted for the report: the scene, who could not answer and why, the other side's answer."""
    base, chal = row["completions"]
    return {"id": row["id"], "forfeit": row["forfeit"], "reason": row.get("reason"), "scene": _cut(_scene(row)),
            "baseline": None if base is None else _cut(base), "challenger": None if chal is None else _cut(chal)}


def _scene(row: dict[str, Any]) -> str:
    """The prompt's last user turn (the whole prompt when it is a string)."""
    prompt = row["prompt"]
    return prompt if isinstance(prompt, str) else next(
        (m["content"] for m in reversed(prompt) if m.get("role") == "user"), "")


def _worst(losses: list[dict[str, Any]], pairs: dict[str, dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """The losses the judge was surest of (lowest confidence of the two orders, highest first), quoted."""
    def confidence(row: dict[str, Any]) -> int:
        swap = row["judge"].get("swap") or {}
        return min(row["judge"].get("confidence", 0), swap.get("confidence", row["judge"].get("confidence", 0)))

    out = []
    for row in sorted(losses, key=lambda r: (-confidence(r), r["id"]))[:k]:
        texts = pairs.get(row["id"], {}).get("completions", ["", ""])
        out.append({"id": row["id"], "confidence": confidence(row), "reason": row["judge"].get("reason"),
                    "scene": _cut(_scene(row)), "baseline": _cut(texts[0]), "challenger": _cut(texts[1])})
    return out


def write_result(out_dir: Path, result: EvalResult) -> tuple[Path, Path]:
    """result.json and report.md in `out_dir` (each written whole, then renamed into place)."""
    json_path, md_path = out_dir / "result.json", out_dir / "report.md"
    atomic_write(json_path, (json.dumps(result.to_dict(), indent=2) + "\n").encode())
    atomic_write(md_path, render(result).encode())
    return json_path, md_path


def render(r: EvalResult) -> str:
    """The Markdown report a person reads (also the ZenML artifact's visualization)."""
    w = r.win_rate
    pct = lambda x: "n/a" if x is None else f"{x:.1%}"  # noqa: E731
    lines = [f"# A/B: {r.challenger} vs {r.baseline}", "", f"**{r.headline()}**", ""]
    if not r.complete:
        lines += [f"Incomplete: {r.judged} prompts have a result so far, not a verdict; rerun to finish the set.", ""]
    if r.gate is not None:
        verdict = "not decided yet" if r.gate["passed"] is None else "passed" if r.gate["passed"] else "FAILED"
        lines += [f"Gate {verdict}: lower end of the interval {pct(r.gate['lower_bound'])} vs min_win_rate "
                  f"{pct(r.gate['min_win_rate'])}.", ""]
    lines += [
        "| | value |", "|---|---|",
        f"| wins / losses / ties | {r.wins} / {r.losses} / {r.ties} |",
        f"| win rate, decided pairs (ties left out) | {pct(w['win_rate_decided'])} "
        f"[{pct(w['ci95_decided'][0])}, {pct(w['ci95_decided'][1])}] of {w['decided']} |",
        f"| win rate, all pairs (ties half) | {pct(w['win_rate_all'])} "
        f"[{pct(w['ci95_all'][0])}, {pct(w['ci95_all'][1])}] of {w['total']} |",
        f"| order agreement (A/B and B/A give the same verdict) | {pct(r.order_agreement)} |",
        f"| ties by reason | {', '.join(f'{k}: {v}' for k, v in sorted(r.ties_by_reason.items())) or '-'} |",
        f"| forfeits (answered only blank: a loss; both: a tie): {r.baseline} / {r.challenger} / both | "
        f"{r.forfeits['baseline']} / {r.forfeits['challenger']} / {r.forfeits['both']} |",
        f"| mean characters: {r.baseline} / {r.challenger} | {r.mean_chars['baseline']} / "
        f"{r.mean_chars['challenger']} |",
        f"| mean characters: winners / losers | {r.mean_chars['winner']} / {r.mean_chars['loser']} |",
        f"| decided pairs won by the longer text (length bias) | {pct(r.longer_wins)} |",
        f"| pairs judged / in the judge's input | {r.judged - sum(r.forfeits.values())} / {r.pairs} |",
        f"| judge | {r.judge_backend or '-'} {r.judge_model or ''}, ${r.cost_usd:.4f} |",
        "", "Intervals: Wilson score, 95%. A pair is a win or a loss only when the judge agrees in both orders.",
    ]
    if r.worst_losses:
        lines += ["", "## Worst losses", ""]
        for loss in r.worst_losses:
            lines += [f"### {loss['id']} (confidence {loss['confidence']})", "", f"> {loss['reason']}", "",
                      "Scene:", "", _quote(loss["scene"]), "", f"{r.baseline} (won):", "", _quote(loss["baseline"]),
                      "", f"{r.challenger} (lost):", "", _quote(loss["challenger"]), ""]
    if r.forfeit_examples:
        lines += ["", "## Forfeits", "", f"Prompts a model could not answer (only blank text after its resamples; "
                  f"all {sum(r.forfeits.values())} in forfeits.jsonl), decided without the judge.", ""]
        who = {"baseline": r.baseline, "challenger": r.challenger, "both": "both models"}
        for f in r.forfeit_examples:
            lines += [f"### {f['id']}: {who[f['forfeit']]} could not answer", "", f"> {f['reason']}", "",
                      "Scene:", "", _quote(f["scene"]), ""]
            lines += [x for side in ("baseline", "challenger") if f[side] is not None
                      for x in (f"{getattr(r, side)}:", "", _quote(f[side]), "")]
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    return "\n".join("    " + line for line in (text or "(empty)").splitlines()) or "    (empty)"


def _cut(text: str) -> str:
    return text if len(text) <= QUOTE_CHARS else text[:QUOTE_CHARS] + " …"


def _mean(values: list[int]) -> float | None:
    return round(sum(values) / len(values), 1) if values else None


def _cost(row: dict[str, Any]) -> float:
    judge = row.get("judge")
    usage = judge.get("usage") if isinstance(judge, dict) else None
    return float(usage.get("cost_usd", 0.0)) if isinstance(usage, dict) else 0.0
