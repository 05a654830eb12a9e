"""The judge's quality report: what a user checks before paying for training.

Built from the files in the output folder (all runs so far), written as report.json and report.md:
rows judged / skipped (by reason) / failed / filtered; the shown position that won (position bias);
how often chosen is longer than rejected (length bias); character tags in chosen vs rejected; the swap
agreement rate; confidence; tokens and cost; and the judge-reliability ledger (`ledger`: who judged, flip rate,
tie rate, longer-wins share, agreement with people), which the A/B result carries too (stages/evaluate/tally.py).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from engine.checkpoint import atomic_write, read_records
from stages.judge.backends import REGISTRY, Backend
from stages.judge.cost import BATCH_DISCOUNT
from stages.judge.prompt import PROMPT_VERSION, RUBRIC

FILTER_REASONS = ("low_confidence", "swap_disagreement")
MAIN_CHARACTERS = ("JERRY", "GEORGE", "ELAINE", "KRAMER")
_TAG = re.compile(r"^\s*\[([^\]\n]{1,40})\]", re.MULTILINE)
# Thresholds for the warnings at the top of report.md.
P_VALUE_ALARM = 0.01
LENGTH_SHARE_ALARM = 0.70
SWAP_AGREEMENT_ALARM = 0.70
TIE_REASONS = ("swap_disagreement", "fewer_than_two_distinct")  # no winner: the orders disagree, or nothing to tell
# Why the ledger has no agreement with people: matching a vote to a judged pair needs the same two texts.
NO_VOTES = ("no votes: the arena samples its own answers (a new random seed each round unless one is set), so no "
            "arena vote compares the two texts judged here; a vote on the same prompt rates other texts")


def judge_identity(judge: Mapping[str, Any] | None) -> dict[str, Any]:
    """Who judged, from a judged row's `judge` record: backend, model, reasoning effort, the prompt's version and
    the SHA-256 of the rubric it sends (a model judge), or the offline judge's rubric version."""
    judge = judge or {}
    backend = REGISTRY.get(judge.get("backend") or "")
    offline = backend is not None and not backend.sends_requests
    version = judge.get("prompt_version")
    return {"backend": judge.get("backend"), "model": judge.get("model"),
            "reasoning_effort": judge.get("reasoning_effort"), "prompt_version": version,
            # the whole rubric this code sends, hashed; only for rows judged with this very version of it
            "prompt_sha256": hashlib.sha256(RUBRIC.encode()).hexdigest()
            if version == PROMPT_VERSION and not offline else None,
            "rubric_version": backend.model if offline else None}


def ledger(identity: dict[str, Any], *, checked: int, flipped: int, rows: int, ties: int,
           longer_wins: float | None, human: dict[str, Any] | None = None) -> dict[str, Any]:
    """The judge-reliability ledger of one judge run or one A/B: how far its verdicts can be trusted.

    flip_rate: the share of the rows judged in both orders whose verdict changed with the order shown; tie_rate: the
    share of rows with a result that have no winner; longer_wins: the share of decided rows, differing in length,
    won by the longer text; human_agreement: with arena votes on the same two texts (none can be matched: NO_VOTES).
    """
    def share(k: int, n: int) -> float | None:
        return round(k / n, 4) if n else None

    return {"judge": identity, "flip_rate": share(flipped, checked), "checked_both_orders": checked,
            "tie_rate": share(ties, rows), "rows": rows, "longer_wins": longer_wins,
            "human_agreement": human or {"votes": 0, "agreement": None, "note": NO_VOTES}}


def ledger_rows(entry: dict[str, Any]) -> list[str]:
    """The ledger as Markdown table rows (`| what | value |`), for the judge's report and the A/B's."""
    pct = lambda x: "n/a" if x is None else f"{x:.1%}"  # noqa: E731
    j, human = entry["judge"], entry["human_agreement"]
    who = ", ".join(f"{k.replace('_', ' ')} {v if k != 'prompt_sha256' else v[:16] + '…'}"
                    for k, v in j.items() if v is not None) or "-"
    people = (f"{pct(human['agreement'])} of {human['votes']} votes" if human["votes"] else
              human.get("note") or "no votes")
    return [f"| flip rate (the verdict changes when the order is swapped) | {pct(entry['flip_rate'])} of "
            f"{entry['checked_both_orders']} |",
            f"| tie rate (no winner) | {pct(entry['tie_rate'])} of {entry['rows']} |",
            f"| longer text won (decided pairs that differ in length) | {pct(entry['longer_wins'])} |",
            f"| agreement with people (arena votes on the same pair) | {_cell(people)} |",
            f"| judge | {_cell(who)} |"]


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return "\n".join(m.get("content", "") for m in value if isinstance(m, dict))


def chi2_sf(x: float, df: int) -> float:
    """P(X >= x) for a chi-square variable with integer df (closed forms; no scipy)."""
    if x <= 0:
        return 1.0
    if df % 2 == 0:
        term = total = 1.0
        for i in range(1, df // 2):
            term *= (x / 2) / i
            total += term
        return min(1.0, math.exp(-x / 2) * total)
    p = math.erfc(math.sqrt(x / 2))
    term = math.sqrt(2 * x / math.pi) * math.exp(-x / 2)
    for i in range(1, (df - 1) // 2 + 1):
        p += term
        term *= x / (2 * i + 1)
    return min(1.0, p)


def _position_stats(judged: list[dict[str, Any]]) -> dict[str, Any]:
    by_k: dict[int, dict[str, list[int]]] = {}
    for j in judged:
        k = j["candidates"]
        slot = by_k.setdefault(k, {"chosen": [0] * k, "rejected": [0] * k})
        slot["chosen"][j["chosen_position"]] += 1
        slot["rejected"][j["rejected_position"]] += 1
    out: dict[str, Any] = {}
    for k, slot in sorted(by_k.items()):
        n = sum(slot["chosen"])
        expected = n / k
        chi2 = sum((c - expected) ** 2 / expected for c in slot["chosen"]) if n else 0.0
        out[str(k)] = {
            "rows": n,
            "chosen_by_position": slot["chosen"],
            "rejected_by_position": slot["rejected"],
            "chosen_share": [round(c / n, 4) for c in slot["chosen"]] if n else [],
            "uniform_share": round(1 / k, 4),
            "chi2": round(chi2, 3),
            "p_value": round(chi2_sf(chi2, k - 1), 4) if n else None,
        }
    return out


def _tags(texts: list[str]) -> Counter[str]:
    c: Counter[str] = Counter()
    for t in texts:
        c.update(m.strip().upper() for m in _TAG.findall(t))
    return c


def build_report(out_dir: Path, name: str = "preferences") -> dict[str, Any]:
    kept = read_records(out_dir / f"{name}.jsonl")
    skipped = read_records(out_dir / f"{name}.skipped.jsonl")
    errors = read_records(out_dir / f"{name}.errors.jsonl")
    rejects = read_records(out_dir / f"{name}.rejects.jsonl")  # input lines the latest run refused or repeated
    summary_path = out_dir / f"{name}.summary.json"
    summary = orjson.loads(summary_path.read_bytes()) if summary_path.exists() else None

    filtered = [r for r in skipped if r.get("reason") in FILTER_REASONS]
    skip_only = Counter(r.get("reason", "unknown") for r in skipped if r.get("reason") not in FILTER_REASONS)
    judged = [r["judge"] for r in kept + filtered if isinstance(r.get("judge"), dict)]
    first = judged[0] if judged else {}

    chosen = [_text(r["chosen"]) for r in kept]
    rejected = [_text(r["rejected"]) for r in kept]
    n = len(kept)
    longer = sum(len(c) > len(r) for c, r in zip(chosen, rejected, strict=True))
    shorter = sum(len(c) < len(r) for c, r in zip(chosen, rejected, strict=True))
    tags_chosen, tags_rejected = _tags(chosen), _tags(rejected)
    others = [t for t, _ in (tags_chosen + tags_rejected).most_common() if t not in MAIN_CHARACTERS][:8]

    swapped = [j["swap"] for j in judged if j.get("swap") is not None]
    agreed = sum(bool(s["agree"]) for s in swapped)
    usage_keys = ("requests", "tokens_in", "tokens_cached", "tokens_out", "tokens_reasoning", "cost_usd")
    usage = {k: sum(j.get("usage", {}).get(k, 0) for j in judged) for k in usage_keys}
    usage["cost_usd"] = round(usage["cost_usd"], 6)
    # Output per ANSWERED request: a 429 or 500 returns no tokens, so dividing by attempts would understate the
    # forecast. Rows written before "answered" was recorded count their requests.
    usage["answered"] = sum(j.get("usage", {}).get("answered", j.get("usage", {}).get("requests", 0)) for j in judged)
    usage["tokens_out_per_request"] = round(usage["tokens_out"] / usage["answered"]) if usage["answered"] else None
    # Rows judged through the Batch API (`--mode batch`) were billed BATCH_DISCOUNT of the live price.
    # A row finished live after a batch answered one of its orders (--finish-live) records that part as
    # `usage.batch`: its half-price order counts here too.
    batch_costs = [u.get("cost_usd", 0) if u.get("mode") == "batch" else u["batch"].get("cost_usd", 0)
                   for u in (j.get("usage", {}) for j in judged)
                   if u.get("mode") == "batch" or isinstance(u.get("batch"), dict)]
    usage["batch_rows"] = len(batch_costs)
    usage["batch_cost_usd"] = round(sum(batch_costs), 6)
    usage["batch_saving_usd"] = round(sum(batch_costs) * (1 / BATCH_DISCOUNT - 1), 6)
    error_reasons = Counter(str(e.get("error", "unknown"))[:160] for e in errors)

    report: dict[str, Any] = {
        "output": str(out_dir / f"{name}.jsonl"),
        "judge": {
            "backend": first.get("backend"),
            "model": first.get("model"),
            "reasoning_effort": first.get("reasoning_effort"),
            "prompt_version": first.get("prompt_version"),
        },
        "rows": {
            "pairs": n,
            "judged": len(judged),
            "filtered": {reason: sum(r.get("reason") == reason for r in filtered) for reason in FILTER_REASONS},
            "skipped": dict(skip_only),
            "failed_latest_run": len(errors),
            "failed_reasons": dict(error_reasons.most_common(10)),
            "rejected_input": sum("duplicate_of" not in r for r in rejects),
            "duplicate_input": sum("duplicate_of" in r for r in rejects),
            "rejected_examples": [f"{r.get('file')}:{r.get('line')}: {r.get('problem')}"
                                  for r in rejects if "duplicate_of" not in r][:5],
        },
        "position_bias": _position_stats(judged),
        "length_bias": {
            "pairs": n,
            "chosen_longer": longer,
            "chosen_shorter": shorter,
            "same_length": n - longer - shorter,
            "chosen_longer_share": round(longer / (longer + shorter), 4) if longer + shorter else None,
            "mean_chars_chosen": round(sum(map(len, chosen)) / n, 1) if n else None,
            "mean_chars_rejected": round(sum(map(len, rejected)) / n, 1) if n else None,
        },
        "character_tags": {
            "chosen": {t: tags_chosen[t] for t in (*MAIN_CHARACTERS, *others)},
            "rejected": {t: tags_rejected[t] for t in (*MAIN_CHARACTERS, *others)},
        },
        "confidence": {str(c): sum(j.get("confidence") == c for j in judged) for c in range(1, 6)},
        "swap": (
            {"checked": len(swapped), "agreed": agreed, "agreement": round(agreed / len(swapped), 4)}
            if swapped else None
        ),
        "usage": usage,
        "latest_run": summary,
    }
    no_winner = sum(r.get("reason") in TIE_REASONS for r in skipped)
    report["ledger"] = ledger(judge_identity(first), checked=len(swapped), flipped=len(swapped) - agreed,
                              rows=n + len(filtered) + skip_only.get("fewer_than_two_distinct", 0), ties=no_winner,
                              longer_wins=report["length_bias"]["chosen_longer_share"])
    report["warnings"] = _warnings(report)
    return report


def _backend(r: dict[str, Any]) -> Backend | None:
    """The registry's entry for the records' backend (None: no judged row, or a name this version does not know)."""
    return REGISTRY.get(r["judge"]["backend"] or "")


def _warnings(r: dict[str, Any]) -> list[str]:
    out = []
    backend = _backend(r)
    if backend is not None and backend.report_warning:
        out.append(backend.report_warning)
    for k, pos in r["position_bias"].items():
        if pos["p_value"] is not None and pos["p_value"] < P_VALUE_ALARM and pos["rows"] >= 20:
            shares = ", ".join(f"{100 * s:.0f}%" for s in pos["chosen_share"])
            out.append(f"Position bias: with {k} candidates the winner's shown position is far from uniform "
                       f"({shares}; p = {pos['p_value']:.2g}). Consider --swap-check.")
    lb = r["length_bias"]
    share = lb["chosen_longer_share"]
    if share is not None and lb["pairs"] >= 20 and (share > LENGTH_SHARE_ALARM or share < 1 - LENGTH_SHARE_ALARM):
        out.append(f"Length bias: chosen is {'longer' if share > 0.5 else 'shorter'} than rejected in "
                   f"{100 * max(share, 1 - share):.0f}% of the pairs that differ in length; DPO will learn length "
                   "as much as style.")
    swap = r["swap"]
    if swap and swap["checked"] >= 20 and swap["agreement"] < SWAP_AGREEMENT_ALARM:
        out.append(f"Swap agreement is only {100 * swap['agreement']:.0f}%: the judge's best/worst depend on "
                   "the order shown for many rows.")
    rows = r["rows"]
    if rows["failed_latest_run"]:
        out.append(f"{rows['failed_latest_run']} row(s) failed in the latest run; rerun the judge to retry them.")
    if rows["rejected_input"]:
        out.append(f"{rows['rejected_input']} input line(s) were rejected (bad JSON or row) and not judged; "
                   f"see the rejects file: {'; '.join(rows['rejected_examples'][:2])}")
    return out


def render_markdown(r: dict[str, Any]) -> str:
    j, rows = r["judge"], r["rows"]
    backend = _backend(r)
    judge = (backend.report_label if backend is not None else None) or (
        f"`{j['model']}` (reasoning effort {j['reasoning_effort']}), prompt `{j['prompt_version']}`")
    lines = [f"# Judge report: `{r['output']}`", "", f"Judge: {judge}", ""]
    if r["warnings"]:
        lines += ["## Warnings", "", *[f"- {w}" for w in r["warnings"]], ""]
    lines += ["## Rows", "", "| | rows |", "|---|---:|", f"| pairs kept (training data) | {rows['pairs']} |"]
    for reason, count in rows["filtered"].items():
        lines.append(f"| filtered: {reason.replace('_', ' ')} | {count} |")
    for reason, count in sorted(rows["skipped"].items()):
        lines.append(f"| skipped: {reason.replace('_', ' ')} | {count} |")
    lines.append(f"| failed in the latest run (a rerun retries them) | {rows['failed_latest_run']} |")
    for reason, count in rows["failed_reasons"].items():
        lines.append(f"| &nbsp;&nbsp;{_cell(reason)} | {count} |")
    lines.append(f"| input lines rejected in the latest run (bad JSON or row) | {rows['rejected_input']} |")
    lines.append(f"| duplicate prompts in the input (judged once) | {rows['duplicate_input']} |")
    lines += ["", "## Position bias", "",
              "Which shown position the judge picked as best (and worst); each row's order is shuffled, so an "
              "unbiased judge is near uniform.", ""]
    for k, pos in r["position_bias"].items():
        head = " | ".join(f"pos {i + 1}" for i in range(int(k)))
        lines += [f"{k} candidates, {pos['rows']} rows (chi-square p = {pos['p_value']}):", "",
                  f"| | {head} |", "|---|" + "---:|" * int(k),
                  "| best | " + " | ".join(f"{c} ({100 * s:.0f}%)" for c, s in
                                           zip(pos["chosen_by_position"], pos["chosen_share"], strict=True)) + " |",
                  "| worst | " + " | ".join(map(str, pos["rejected_by_position"])) + " |", ""]
    lb = r["length_bias"]
    if lb["pairs"]:
        share = "" if lb["chosen_longer_share"] is None else (
            f" (longer in {100 * lb['chosen_longer_share']:.0f}% of the pairs that differ)")
        lines += ["## Length bias", "",
                  f"Of {lb['pairs']} pairs, chosen is longer than rejected in {lb['chosen_longer']} and shorter in "
                  f"{lb['chosen_shorter']}{share}; the same length in {lb['same_length']}. Mean length: chosen "
                  f"{lb['mean_chars_chosen']:,.0f} chars, rejected {lb['mean_chars_rejected']:,.0f} chars.", ""]
    tags = r["character_tags"]
    lines += ["## Character tags (lines per speaker)", "", "| tag | chosen | rejected |", "|---|---:|---:|"]
    lines += [f"| {t} | {tags['chosen'][t]} | {tags['rejected'][t]} |" for t in tags["chosen"]]
    conf = r["confidence"]
    lines += ["", "## Confidence", "", "| " + " | ".join(conf) + " |", "|" + "---:|" * len(conf),
              "| " + " | ".join(str(v) for v in conf.values()) + " |", ""]
    if r["swap"]:
        s = r["swap"]
        lines += ["## Swap check", "",
                  f"Best and worst agreed in both orders for {s['agreed']} of {s['checked']} rows "
                  f"({100 * s['agreement']:.0f}%); the others are filtered.", ""]
    if r.get("ledger"):
        lines += ["## Reliability ledger", "", "| | value |", "|---|---|", *ledger_rows(r["ledger"]), ""]
    u = r["usage"]
    lines += ["## Tokens and cost", "",
              f"Rows with a judgement (kept and filtered), all runs: {u['requests']} requests "
              f"({u.get('answered', u['requests'])} answered), "
              f"{u['tokens_in']:,} input tokens ({u['tokens_cached']:,} cached), {u['tokens_out']:,} output "
              f"({u['tokens_reasoning']:,} reasoning), ${u['cost_usd']:.4f}."]
    if u.get("batch_rows"):
        lines.append(f"Batch API: {u['batch_rows']} row(s) judged for ${u['batch_cost_usd']:.4f}; at live prices they "
                     f"would have cost ${u['batch_cost_usd'] + u['batch_saving_usd']:.4f} (saved "
                     f"${u['batch_saving_usd']:.4f}).")
    if u["tokens_out_per_request"]:
        lines.append(f"Output per answered request: {u['tokens_out_per_request']:,} tokens; forecast a full run with "
                     f"`estimate --expected-output-tokens {u['tokens_out_per_request']}`.")
    run = r["latest_run"]
    if run:
        lines.append(f"Latest run: {run.get('requests', 0)} requests, ${run.get('cost_usd', 0):.4f} "
                     "(includes requests of failed rows)"
                     + (f"; stopped: {run['stopped_reason']}" if run.get("stopped_reason") else "") + ".")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def write_report(out_dir: Path, name: str = "preferences") -> tuple[Path, Path]:
    report = build_report(out_dir, name)
    json_path, md_path = out_dir / "report.json", out_dir / "report.md"
    atomic_write(json_path, orjson.dumps(report, option=orjson.OPT_INDENT_2))
    atomic_write(md_path, render_markdown(report).encode())
    return json_path, md_path
