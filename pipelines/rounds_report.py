"""The rounds' report: a table round by round (win rate over SFT and over the previous round, each with its 95%
interval, judged pairs, cost) and the win-rate chart, written beside the round records and saved to ZenML as the
`rounds_report` artifact (the dashboard shows the table and the chart)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPORT_MD = "report.md"
REPORT_JSON = "rounds.json"
CHART = "win_rate_by_round.png"


def _rate(ab: dict[str, Any] | None) -> str:
    if not ab or ab.get("win_rate_all") is None:
        return "-"
    return f"{ab['win_rate_all']:.1%} [{ab['ci95_all_low']:.1%}, {ab['ci95_all_high']:.1%}]"


def _record_tally(ab: dict[str, Any] | None) -> str:
    if not ab or "wins" not in ab:
        return "-"
    return f"{ab['wins']} / {ab['losses']} / {ab['ties']}"


def render_table(records: list[Any]) -> str:
    lines = ["| round | status | pairs trained on (judged) | vs SFT: wins / losses / ties | win rate vs SFT [95%] | "
             "vs previous: wins / losses / ties | win rate vs previous [95%] | cost |",
             "|---|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r.round} | {r.status} | {r.pairs} | {_record_tally(r.vs_sft)} | {_rate(r.vs_sft)} | "
                     f"{_record_tally(r.vs_previous)} | {_rate(r.vs_previous)} | ${r.cost_usd:.2f} |")
    return "\n".join(lines)


def render_markdown(records: list[Any], *, deployed: int | None, stopped: str) -> str:
    serving = f"round {deployed}'s adapter serves as seinfeld-dpo" if deployed else "no round passed: SFT serves"
    return "\n".join([
        "# DPO rounds", "",
        "Each round samples from the previous round's adapter, trains on from it (the SFT adapter is the frozen "
        "reference) and is judged against SFT and against the previous round on the same held-out prompts "
        "(ties count half).", "",
        render_table(records), "",
        f"{stopped}; {serving}.", ""])


def chart(records: list[Any]) -> bytes:
    """Win rate by round over SFT and over the previous round, with 95% intervals and the 50% line."""
    from steps.charts import _figure, _png

    plt, (fig, ax) = _figure(6, 3.2)
    for key, label, color, shift in (("vs_sft", "over SFT", "#1565c0", -0.06),
                                     ("vs_previous", "over the previous round", "#ef6c00", 0.06)):
        points = [(r.round, getattr(r, key)) for r in records if getattr(r, key) and
                  getattr(r, key).get("win_rate_all") is not None]
        if not points:
            continue
        xs = [k + shift for k, _ in points]
        ys = [ab["win_rate_all"] for _, ab in points]
        err = [[y - ab["ci95_all_low"] for y, (_, ab) in zip(ys, points, strict=True)],
               [ab["ci95_all_high"] - y for y, (_, ab) in zip(ys, points, strict=True)]]
        ax.errorbar(xs, ys, yerr=err, fmt="o-", color=color, capsize=4, label=label)
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
