"""The last lines of a run: did DPO win, where the report is, and how to try the models that stay up.

Pure functions over the A/B result (result.json's data) and the deployment record, so the CLI prints them after
`run` and tests read them without ZenML. No key is ever printed: `chat` and the arena read it themselves.
"""

from __future__ import annotations

from typing import Any

CLI = "python -m pipelines.dpo"


def verdict(result: dict[str, Any]) -> str:
    """One line: who beat whom, by how much, on how many held-out prompts, and what the gate did."""
    challenger, baseline = result["challenger"], result["baseline"]
    w = result["win_rate"]
    low, high = w["ci95_all"]
    if not result.get("complete", True):
        return (f"{challenger} vs {baseline}: no verdict yet, the A/B is incomplete ({result['judged']} judged): "
                "run the same command again to finish it")
    if low > 0.5:
        head = f"{challenger} beats {baseline}"
    elif high < 0.5:
        head = f"{challenger} loses to {baseline}"
    else:
        head = f"{challenger} vs {baseline}: no measurable difference"
    counts = f"{result['wins']} wins, {result['losses']} losses, {result['ties']} ties"
    gate = result.get("gate")
    if gate is None:
        kept = "no gate: both stay served"
    else:
        kept = f"gate {gate['min_win_rate']:.0%}: {'kept' if gate['passed'] else 'rolled back'}"
    return (f"{head}: {w['win_rate_all']:.1%} [{low:.1%}, {high:.1%}] on {result['judged']} held-out prompts "
            f"({counts}; {kept})")


def answer_lines(result: dict[str, Any] | None, files: dict[str, str], record: dict[str, Any] | None) -> list[str]:
    """The verdict, the report and chart paths, and how to talk to the served models, the arena, the dashboard."""
    lines: list[str] = []
    if result is not None:
        lines.append(verdict(result))
        lines += [f"  {name}: {path}" for name, path in files.items()]
    if record is not None:
        models = [m for m in record.get("models", []) if m != record.get("base_model")]
        model = "seinfeld-dpo" if "seinfeld-dpo" in models else (models[-1] if models else "seinfeld")
        lines.append(f"serving {', '.join(models)} at {record.get('base_url')} (it stays up)")
        if record.get("target") == "local":
            lines.append(f'  try it: {CLI} chat --model {model} "[JERRY] So what is the deal with airline food?"')
            lines.append(f"  stop it: {CLI} deploy --local --stop")
        else:
            lines.append(f"  try it: SERVE_URL={record.get('base_url')} {CLI} chat --model {model} "
                         '"[JERRY] So what is the deal with airline food?"  (key: $SERVE_API_KEY)')
        lines.append(f"  blind A/B in the browser: {CLI} arena   (votes become preference pairs)")
    lines.append(f"  the run's steps, artifacts and lineage: {CLI} dashboard")
    return lines
