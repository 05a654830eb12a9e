"""The rounds' report: a table round by round (win rate over SFT and over the previous round, raw and
length-controlled, each with its 95% interval, judged pairs, cost), the judge's reliability ledger of every A/B (flip
rate, tie rate, longer-wins share, agreement with people, who judged) and the win-rate chart, written beside the round
records and saved to ZenML as the `rounds_report` artifact (the dashboard shows the tables and the chart)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPORT_MD = "report.md"
REPORT_JSON = "rounds.json"
CHART = "win_rate_by_round.png"


def _rate(ab: dict[str, Any] | None, prefix: str = "") -> str:
    """`win_rate_all` [ci95_all_low, ci95_all_high]; with prefix "lc_", the length-controlled one ("-" in records
    from before it existed)."""
    key = f"{prefix}win_rate" if prefix else "win_rate_all"
    low, high = (f"{prefix}ci95_low", f"{prefix}ci95_high") if prefix else ("ci95_all_low", "ci95_all_high")
    if not ab or ab.get(key) is None:
        return "-"
    disagrees = " (disagrees)" if prefix and ab.get("lc_disagrees") else ""
    return f"{ab[key]:.1%} [{ab[low]:.1%}, {ab[high]:.1%}]{disagrees}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _record_tally(ab: dict[str, Any] | None) -> str:
    if not ab or "wins" not in ab:
        return "-"
    return f"{ab['wins']} / {ab['losses']} / {ab['ties']}"


def render_table(records: list[Any]) -> str:
    lines = ["| round | status | pairs trained on (judged) | vs SFT: wins / losses / ties | win rate vs SFT [95%] | "
             "length-controlled vs SFT [95%] | vs previous: wins / losses / ties | win rate vs previous [95%] | "
             "length-controlled vs previous [95%] | cost |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r.round} | {r.status} | {r.pairs} | {_record_tally(r.vs_sft)} | {_rate(r.vs_sft)} | "
                     f"{_rate(r.vs_sft, 'lc_')} | {_record_tally(r.vs_previous)} | {_rate(r.vs_previous)} | "
                     f"{_rate(r.vs_previous, 'lc_')} | ${r.cost_usd:.2f} |")
    return "\n".join(lines)


def render_ledger(records: list[Any]) -> str:
    """The judge's reliability on every round's A/Bs, one row each (stages/judge/report.py `ledger`)."""
    lines = ["| round | A/B | judge | flip rate | tie rate | longer text won | agreement with people | warnings |",
             "|---|---|---|---|---|---|---|---|"]
    for r in records:
        for name, ab in (("vs SFT", r.vs_sft), ("vs previous", r.vs_previous)):
            if not ab:
                continue
            judge = ", ".join(str(ab[k]) for k in ("judge_model", "judge_reasoning_effort", "judge_prompt_version")
                              if ab.get(k) is not None) or "-"
            people = f"{_pct(ab.get('human_agreement'))} of {ab['human_votes']}" if ab.get("human_votes") else (
                "no votes" if "human_votes" in ab else "-")
            warned = f"WARNING x{ab['judge_warnings']}" if ab.get("judge_warnings") else "-"
            lines.append(f"| {r.round} | {name} | {judge} | {_pct(ab.get('flip_rate'))} | {_pct(ab.get('tie_rate'))} "
                         f"| {_pct(ab.get('longer_wins'))} | {people} | {warned} |")
    return "\n".join(lines)


def render_markdown(records: list[Any], *, deployed: int | None, stopped: str) -> str:
    serving = f"round {deployed}'s adapter serves as seinfeld-dpo" if deployed else "no round passed: SFT serves"
    return "\n".join([
        "# DPO rounds", "",
        "Each round samples from the previous round's adapter, trains on from it (the SFT adapter is the frozen "
        "reference) and is judged against SFT and against the previous round on the same held-out prompts "
        "(ties count half).", "",
        render_table(records), "",
        f"{stopped}; {serving}.", "",
        "## Judge reliability", "",
        "Flip rate: the verdict changed when the order was swapped; longer text won: of the decided pairs that differ "
        "in length; no votes: no arena vote compares the two texts an A/B judged (the arena samples its own). A "
        "length-controlled win rate that disagrees with the raw one points at length bias.", "",
        render_ledger(records), ""])


def chart(records: list[Any]) -> bytes:
    """Win rate by round over SFT and over the previous round, raw (solid) and length-controlled (dashed), with 95%
    intervals and the 50% line."""
    from steps.charts import _figure, _png

    plt, (fig, ax) = _figure(6, 3.2)
    for key, label, color, shift in (("vs_sft", "over SFT", "#1565c0", -0.06),
                                     ("vs_previous", "over the previous round", "#ef6c00", 0.06)):
        for rate, low, high, fmt, nudge, suffix in (("win_rate_all", "ci95_all_low", "ci95_all_high", "o-", 0, ""),
                                                     ("lc_win_rate", "lc_ci95_low", "lc_ci95_high", "D--", 0.1,
                                                      ", length-controlled")):
            points = [(r.round, getattr(r, key)) for r in records if getattr(r, key) and
                      getattr(r, key).get(rate) is not None]
            if not points:
                continue
            xs = [k + shift + (nudge if shift > 0 else -nudge) for k, _ in points]
            ys = [ab[rate] for _, ab in points]
            err = [[y - ab[low] for y, (_, ab) in zip(ys, points, strict=True)],
                   [ab[high] - y for y, (_, ab) in zip(ys, points, strict=True)]]
            ax.errorbar(xs, ys, yerr=err, fmt=fmt, color=color, capsize=4, label=label + suffix,
                        alpha=0.6 if suffix else 1.0)
    ax.axhline(0.5, color="#757575", linestyle="--", linewidth=1)
    ax.set_xticks([r.round for r in records])
    ax.set_xlabel("round")
    ax.set_ylabel("win rate of seinfeld-dpo")
    ax.set_ylim(0, 1)
    ax.legend(loc="lower right", fontsize=8)
    return _png(plt, fig)


def write_report(folder: Path, records: list[Any], settings: Any, *, deployed: int | None, stopped: str,
                 save_artifact: bool) -> None:
    """report.md, rounds.json and the chart into `folder`; with `save_artifact`, a `rounds_report` version too."""
    folder.mkdir(parents=True, exist_ok=True)
    markdown = render_markdown(records, deployed=deployed, stopped=stopped)
    data = {"rounds": [r.to_dict() for r in records], "deployed_round": deployed, "stopped": stopped,
            "settings": {"count": settings.count, "prompts": settings.prompts, "data": settings.data,
                         "min_gain": settings.min_gain}}
    png = chart(records)
    (folder / REPORT_MD).write_text(markdown, encoding="utf-8")
    (folder / REPORT_JSON).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    (folder / CHART).write_bytes(png)
    if save_artifact:
        import zenml

        import steps.materializers  # noqa: F401 - registers the ABEval materializer (report + chart views)
        from steps.names import Artifact
        from steps.records import ABEval

        zenml.save_artifact(ABEval(data=data, markdown=markdown, charts={CHART: png}), name=Artifact.ROUNDS_REPORT,
                            user_metadata={"rounds": len(records), "deployed_round": deployed or 0})
