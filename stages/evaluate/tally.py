"""Count an A/B judging run: wins, losses, ties, win rates with Wilson 95% intervals, order agreement, lengths.

Read from the judge stage's files (every pair judged in both orders):
- preferences.jsonl: both orders agreed; the challenger won when it is the chosen one (index 1), else it lost;
- preferences.skipped.jsonl: `swap_disagreement` (the orders disagree) and `fewer_than_two_distinct` (the two
  texts are the same, or empty) are ties; any other skip is a tie too, counted under its reason.
Errors (preferences.errors.jsonl) are not results: a rerun judges those pairs again.
And from the evaluation's forfeits.jsonl (prompts a model answered only blank, never sent to the judge): a loss
for the model that could not answer, a tie (`both_forfeited`) when neither could. So a model that answers
many prompts blank loses them, and fails a gate.

Beside the raw win rate, the length-controlled one (stages/evaluate/length.py: the verdict predicted at equal answer
length), with `disagree` saying so when the two give different verdicts; the gate reads the one `gate_on` names. And
the judge-reliability ledger (stages/judge/report.py `ledger`): who judged, flip rate, tie rate, longer-wins share,
agreement with people; past `max_flip_rate` or `max_longer_wins` the report warns (never fails).

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
from stages.evaluate.length import length_controlled
from stages.evaluate.winrate import WinRate
from stages.judge.report import judge_identity, ledger, ledger_rows

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
    gate: dict[str, Any] | None = None  # {"on", "min_win_rate", "lower_bound", "passed"} when a gate is set
    complete: bool = False  # every prompt has a result: only then is the count a verdict
    # The verdict: None while incomplete (a rerun finishes the set, then decides); when complete, the gate's
    # (True with no gate set: nothing to fail).
    passed: bool | None = None
    # The length-controlled win rate over all pairs (ties half), stages.evaluate.length.LengthControlled.to_dict().
    lc_win_rate: dict[str, Any] | None = None
    disagree: str | None = None  # why the raw and the length-controlled verdicts differ; None: they agree
    judge_ledger: dict[str, Any] | None = None  # stages.judge.report.ledger: the judge's reliability on this A/B
    warnings: list[str] = field(default_factory=list)  # the ledger past its configured bounds (never a failure)

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
        lc = ""
        if self.lc_win_rate and self.lc_win_rate["win_rate"] is not None:
            (llo, lhi), lrate = self.lc_win_rate["ci95"], self.lc_win_rate["win_rate"]
            lc = f"; length-controlled {lrate:.1%} ({llo:.1%}-{lhi:.1%})"
        return (f"{self.challenger} beats {self.baseline} in {self.wins}, loses {self.losses}, ties {self.ties} "
                f"of {self.judged} pairs{by_forfeit}: win rate {rate} (95% Wilson interval {lo:.1%}-{hi:.1%}, "
                f"ties half){lc}")


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
    # The length-controlled rate: each pair the judge saw (1 won, 0 lost, 0.5 tie) against its length difference;
    # forfeits are no judge's verdict and count as they are (the baseline's: a win, the challenger's: a loss).
    lc = length_controlled([float(r["judge"]["chosen_index"] == CHALLENGER) for r in agreed] + [0.5] * len(skipped),
                           [_length_diff(pairs.get(r["id"])) for r in agreed + skipped],
                           [1.0] * forfeits["baseline"] + [0.0] * forfeits["challenger"] + [0.5] * forfeits["both"])
    raw_dict, lc_dict = rate.to_dict(), lc.to_dict()
    judge_meta = next((r["judge"] for r in agreed if "judge" in r), None) or next(
        (r["judge"] for r in skipped if isinstance(r.get("judge"), dict)), {})
    judged_ids = {r["id"] for r in agreed + skipped}
    complete = sampled and all(row_id in judged_ids for row_id in pairs)
    gate = passed = None
    if settings.min_win_rate is not None:
        lower = lc.interval[0] if settings.gate_on == "lc" else rate.interval_all[0]
        passed = lower >= settings.min_win_rate if complete else None
        gate = {"on": settings.gate_on, "min_win_rate": settings.min_win_rate, "lower_bound": round(lower, 4),
                "passed": passed}
    elif complete:
        passed = True
    mean_chars = {"baseline": _mean(base_len), "challenger": _mean(chal_len), "winner": _mean(win_len),
                  "loser": _mean(lose_len)}
    flipped = ties_by_reason.get("swap_disagreement", 0)
    judge_ledger = ledger(judge_identity(judge_meta), checked=both_orders, flipped=flipped,
                          rows=len(agreed) + len(skipped), ties=len(skipped),
                          longer_wins=round(sum(longer_won) / len(longer_won), 4) if longer_won else None)
    return EvalResult(
        baseline=settings.baseline,
        challenger=settings.challenger,
        wins=won,
        losses=lost,
        ties=ties,
        ties_by_reason=ties_by_reason,
        win_rate=raw_dict,
        order_agreement=round(len(agreed) / both_orders, 4) if both_orders else None,
        mean_chars=mean_chars,
        longer_wins=judge_ledger["longer_wins"],
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
        lc_win_rate=lc_dict,
        disagree=_disagreement(raw_dict, lc_dict, settings, mean_chars),
        judge_ledger=judge_ledger,
        warnings=_ledger_warnings(judge_ledger, flipped, settings),
    )


def _length_diff(pair: dict[str, Any] | None) -> int:
    """The challenger's text length minus the baseline's, in characters (0 when the pair is not at hand)."""
    texts = (pair or {}).get("completions") or [None, None]
    return len(texts[1] or "") - len(texts[0] or "") if all(isinstance(t, str) for t in texts) else 0


def _says(interval: list[float], settings: Any) -> str:
    """What a win rate's 95% interval says of the challenger against chance."""
    lo, hi = interval
    return (f"{settings.challenger} better" if lo > 0.5 else f"{settings.challenger} worse" if hi < 0.5
            else "no clear difference")


def _disagreement(raw: dict[str, Any], lc: dict[str, Any], settings: Any, mean_chars: dict[str, Any]) -> str | None:
    """A sentence when the raw and the length-controlled win rates give different verdicts: against chance (which
    side of 50% the 95% interval lies, or neither), or at the gate (its lower end against min_win_rate); None when
    they agree. Point estimates on either side of 50% inside both intervals are noise, not a disagreement."""
    if raw["win_rate_all"] is None or lc["win_rate"] is None:
        return None
    pct = lambda x: f"{x:.1%}"  # noqa: E731
    parts = []
    raw_says, lc_says = _says(raw["ci95_all"], settings), _says(lc["ci95"], settings)
    if raw_says != lc_says:
        parts.append(f"raw {pct(raw['win_rate_all'])} [{pct(raw['ci95_all'][0])}, {pct(raw['ci95_all'][1])}] says "
                     f"{raw_says}, length-controlled {pct(lc['win_rate'])} [{pct(lc['ci95'][0])}, "
                     f"{pct(lc['ci95'][1])}] says {lc_says}")
    bar = settings.min_win_rate
    if bar is not None and (raw["ci95_all"][0] >= bar) != (lc["ci95"][0] >= bar):
        verdict = lambda lo: "passes" if lo >= bar else "fails"  # noqa: E731
        parts.append(f"the gate (min_win_rate {pct(bar)}) {verdict(raw['ci95_all'][0])} on the raw rate and "
                     f"{verdict(lc['ci95'][0])} on the length-controlled one (gate_on: {settings.gate_on})")
    if not parts:
        return None
    return (f"Raw and length-controlled win rates disagree: {'; '.join(parts)}. Mean characters: {settings.challenger} "
            f"{mean_chars['challenger']}, {settings.baseline} {mean_chars['baseline']}.")


def _ledger_warnings(entry: dict[str, Any], flipped: int, settings: Any) -> list[str]:
    """A WARNING line for each ledger figure past its configured bound (evaluate.max_flip_rate, max_longer_wins)."""
    out = []
    flip, longer = entry["flip_rate"], entry["longer_wins"]
    if settings.max_flip_rate is not None and flip is not None and flip > settings.max_flip_rate:
        out.append(f"WARNING: the judge's verdict flipped when the order was swapped in {flip:.1%} of the pairs "
                   f"({flipped} of {entry['checked_both_orders']}), above max_flip_rate "
                   f"{settings.max_flip_rate:.0%}: its verdicts depend on the order shown.")
    if settings.max_longer_wins is not None and longer is not None and longer > settings.max_longer_wins:
        out.append(f"WARNING: the longer text won {longer:.1%} of the decided pairs that differ in length, above "
                   f"max_longer_wins {settings.max_longer_wins:.0%}: the judge may reward length; read the "
                   "length-controlled win rate.")
    return out


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
    lc = r.lc_win_rate or {"win_rate": None, "ci95": [0.0, 1.0], "judged": 0, "fixed": 0, "slope": None}
    lines = [f"# A/B: {r.challenger} vs {r.baseline}", "", f"**{r.headline()}**", ""]
    lines += [line for w in r.warnings for line in (w, "")]
    if not r.complete:
        lines += [f"Incomplete: {r.judged} prompts have a result so far, not a verdict; rerun to finish the set.", ""]
    if r.gate is not None:
        verdict = "not decided yet" if r.gate["passed"] is None else "passed" if r.gate["passed"] else "FAILED"
        which = "length-controlled" if r.gate.get("on") == "lc" else "raw"
        lines += [f"Gate {verdict}: lower end of the {which} win rate's interval {pct(r.gate['lower_bound'])} vs "
                  f"min_win_rate {pct(r.gate['min_win_rate'])}.", ""]
    if r.disagree:
        lines += [f"**{r.disagree}**", ""]
    lines += [
        "| | value |", "|---|---|",
        f"| wins / losses / ties | {r.wins} / {r.losses} / {r.ties} |",
        f"| win rate, decided pairs (ties left out) | {pct(w['win_rate_decided'])} "
        f"[{pct(w['ci95_decided'][0])}, {pct(w['ci95_decided'][1])}] of {w['decided']} |",
        f"| win rate, all pairs (ties half) | {pct(w['win_rate_all'])} "
        f"[{pct(w['ci95_all'][0])}, {pct(w['ci95_all'][1])}] of {w['total']} |",
        f"| win rate, length-controlled (all pairs, ties half, at equal length) | {pct(lc['win_rate'])} "
        f"[{pct(lc['ci95'][0])}, {pct(lc['ci95'][1])}] of {lc['judged'] + lc['fixed']} |",
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
        "", "Intervals: Wilson score, 95%; length-controlled: bootstrap, 95% (a logistic fit of the verdict on "
        f"tanh(length difference / sd), read at zero difference; slope {lc['slope']}). A pair is a win or a loss only "
        "when the judge agrees in both orders.",
    ]
    if r.judge_ledger:
        lines += ["", "## Judge reliability", "", "| | value |", "|---|---|", *ledger_rows(r.judge_ledger)]
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
