"""The small typed records the steps pass between them (plain dataclasses: no ZenML import here).

`JsonlFile` is a JSONL data set (its materializer in steps/materializers.py copies the file into the
artifact store and hashes its content); `AdapterRef` points at a trained adapter without copying it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHUNK = 1 << 20


@dataclass(frozen=True)
class JsonlFile:
    """A JSONL file and what identifies its content."""

    path: Path
    rows: int
    sha256: str

    @classmethod
    def of(cls, path: Path) -> JsonlFile:
        """Describe the file at `path` (counts complete lines, hashes the bytes)."""
        h = hashlib.sha256()
        rows = 0
        with open(path, "rb") as f:
            while block := f.read(CHUNK):
                h.update(block)
                rows += block.count(b"\n")
        return cls(path=Path(path), rows=rows, sha256=h.hexdigest())


@dataclass(frozen=True)
class AdapterRef:
    """A trained LoRA adapter by reference: the weights stay where training wrote them."""

    name: str  # the name it is served under ("seinfeld-dpo")
    path: str  # a local folder (local profile) or a path on the Modal volume
    sha256: str  # content hash of adapter_config.json + weights, checked again at deploy
    base_model: str
    steps: int
    metrics: dict[str, Any] = field(default_factory=dict)
    location: str = "local"  # "local" or "modal-volume"


@dataclass(frozen=True)
class Report:
    """A JSON report with its Markdown rendering (shown as the artifact's visualization in the dashboard)."""

    data: dict[str, Any]
    markdown: str


@dataclass(frozen=True)
class ABEval:
    """The A/B evaluation: result.json's data, the Markdown report and PNG charts (name -> bytes), and the verdict.

    The dashboard shows the report and each chart (the win rate, the DPO training curves). `complete`: every
    prompt was judged (only such an A/B is a verdict); `passed`: the gate's verdict (True with no gate), which
    the promote-or-rollback step acts on."""

    data: dict[str, Any]
    markdown: str
    charts: dict[str, bytes] = field(default_factory=dict)
    complete: bool = True
    passed: bool = True


def ab_eval_metadata(result: dict[str, Any]) -> dict[str, Any]:
    """The numbers a dashboard reader wants from an A/B result (step and artifact metadata alike)."""
    w = result["win_rate"]
    meta = {"wins": result["wins"], "losses": result["losses"], "ties": result["ties"], "n": result["judged"],
            "win_rate_all": w["win_rate_all"], "ci95_all_low": w["ci95_all"][0], "ci95_all_high": w["ci95_all"][1],
            "win_rate_decided": w["win_rate_decided"], "ci95_decided_low": w["ci95_decided"][0],
            "ci95_decided_high": w["ci95_decided"][1], "order_agreement": result["order_agreement"],
            "cost_usd": result["cost_usd"], "interval": w["interval"]}
    lc, ledger = result.get("lc_win_rate"), result.get("judge_ledger")
    if lc:  # the length-controlled win rate (stages/evaluate/length.py), and whether its verdict differs
        meta |= {"lc_win_rate": lc["win_rate"], "lc_ci95_low": lc["ci95"][0], "lc_ci95_high": lc["ci95"][1],
                 "lc_disagrees": result.get("disagree") is not None}
    if ledger:  # the judge's reliability on this A/B (stages/judge/report.py `ledger`)
        judge, human = ledger["judge"], ledger["human_agreement"]
        meta |= {"flip_rate": ledger["flip_rate"], "tie_rate": ledger["tie_rate"], "longer_wins": ledger["longer_wins"],
                 "human_votes": human["votes"], "human_agreement": human["agreement"],
                 "judge_warnings": len(result.get("warnings") or []),
                 **{f"judge_{k}": judge[k] for k in ("model", "reasoning_effort", "prompt_version", "rubric_version")}}
    if result.get("gate"):
        meta["gate_passed"] = result["gate"]["passed"]
        meta["gate_min_win_rate"] = result["gate"]["min_win_rate"]
        meta["gate_on"] = result["gate"].get("on", "raw")
    return {k: v for k, v in meta.items() if v is not None}
