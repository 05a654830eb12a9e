"""The two cards `publish` writes: the preference set's dataset card and the DPO adapter's model card.

Each is a YAML header the Hub reads (built with yaml.safe_dump, so any value is quoted as YAML needs) and a
Markdown body from the run's records. Pure functions of plain data: pipelines/publish.py gathers the data.
"""

from __future__ import annotations

from typing import Any

import yaml

# What a reader must do before a public release: the license is not ours to choose (the prompts come from the
# show's scripts, the samples from a model with its own license).
LICENSE_NOTE = ("`license: other` is a placeholder: the pairs quote Seinfeld scripts and text sampled from a "
                "model under its own license. Choose the license before making the repository public (edit the "
                "header, or `publish --license ID`).")


def front_matter(header: dict[str, Any]) -> str:
    """The YAML block between `---` lines that the Hub reads at the top of a README.md."""
    return "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True) + "---\n"


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def interval(ci: Any) -> str:
    if not isinstance(ci, list | tuple) or len(ci) != 2 or None in ci:
        return "n/a"
    return f"[{pct(ci[0])}, {pct(ci[1])}]"


def value(v: Any) -> str:
    """A setting or a metric in a table cell: floats to 4 significant digits, in backticks."""
    return f"`{v:.4g}`" if isinstance(v, float) else f"`{v}`"


def _rows(pairs: list[tuple[str, Any]]) -> list[str]:
    return ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in pairs)]


def dataset_card(*, name: str, license_id: str, splits: dict[str, str], counts: dict[str, Any],
                 source: dict[str, Any], sampling: dict[str, Any], judge: dict[str, Any],
                 report: dict[str, Any]) -> str:
    """The dataset card: header (configs/data_files of each split, task, tags, license) and the provenance body.

    `splits`: split name -> data_files glob; `counts`: pairs, train, validation; `source`: run, round, prompts
    (file, sha256); `sampling` and `judge`: the settings that made the pairs; `report`: the judge's report.json."""
    header = {
        "pretty_name": name,
        "license": license_id,
        "language": ["en"],
        "task_categories": ["text-generation"],
        "tags": ["dpo", "preference", "trl", "synthetic", "llm-as-judge"],
        "size_categories": [_size_category(counts["pairs"])],
        "configs": [{"config_name": "default",
                     "data_files": [{"split": s, "path": glob} for s, glob in splits.items()]}],
    }
    rows = report.get("rows", {})
    skipped = {**{k: v for k, v in (rows.get("filtered") or {}).items() if v},
               **(rows.get("skipped") or {})}
    lines = [
        front_matter(header),
        f"# {name}",
        "",
        "DPO preference pairs made from a fine-tuned model's own samples: each prompt was sampled "
        f"{sampling.get('n', '?')} times, a judge ranked the samples, and the best and the worst became `chosen` and "
        "`rejected`. Columns: TRL's `prompt`, `chosen`, `rejected` (conversational: lists of "
        "`{role, content}` messages), plus `id` (the pair's row id), `reason` (the judge's reason), `round` (the "
        "on-policy round that made the pair; 1 for a plain run) and `source` (`judge`, or `arena` for a pair from "
        "human votes).",
        "",
        "```python",
        "from datasets import load_dataset",
        f"ds = load_dataset(\"{name}\")  # or the local folder this card is in",
        "```",
        "",
        *_license(license_id),
        "## Source",
        "",
        *_rows([("run", f"`{source['run_name']}` (`{source['run_id']}`)"), ("round", source["round"]),
                ("prompts", f"`{source['prompts_file']}`"), ("prompts sha256", f"`{source['prompts_sha256']}`")]),
        "",
        "## Sampling",
        "",
        *_rows([(k, value(v)) for k, v in sampling.items()]),
        "",
        "## Judge",
        "",
        *_rows([(k, value(v)) for k, v in judge.items()]),
        "",
        "## Counts",
        "",
        *_rows([("pairs", counts["pairs"]), *((f"{s} split", counts[s]) for s in splits),
                *(("pairs the judge made in this run", counts[k]) for k in ("judged in this run",) if k in counts),
                *((f"skipped: {reason.replace('_', ' ')}", n) for reason, n in sorted(skipped.items())),
                *((("skipped", 0),) if not skipped else ()),
                ("failed (judge's latest run)", rows.get("failed_latest_run", 0))]),
        "",
        "Skipped rows are prompts the judge made no pair from (e.g. fewer than two distinct samples, or the two "
        "orders of a swap check disagreeing). The skip counts and the figures below are the judge's quality report: "
        f"every row judged with these settings in the run's working folder ({rows.get('pairs', '?')} pairs), "
        "which may be more than this run's.",
        "",
        "## Judge quality",
        "",
        *_bias_lines(report),
    ]
    return "\n".join(lines) + "\n"


def _bias_lines(report: dict[str, Any]) -> list[str]:
    out = []
    for k, pos in sorted((report.get("position_bias") or {}).items()):
        shares = ", ".join(pct(s) for s in pos.get("chosen_share", []))
        out.append(f"- Position bias ({k} candidates, {pos.get('rows')} rows): chosen by shown position {shares} "
                   f"(uniform {pct(pos.get('uniform_share'))}; chi-square p = {pos.get('p_value')}).")
    lb = report.get("length_bias") or {}
    if lb:
        out.append(f"- Length bias: chosen is the longer text in {pct(lb.get('chosen_longer_share'))} of pairs that "
                   f"differ in length ({lb.get('chosen_longer')} longer, {lb.get('chosen_shorter')} shorter, "
                   f"{lb.get('same_length')} equal); mean characters chosen {lb.get('mean_chars_chosen')}, "
                   f"rejected {lb.get('mean_chars_rejected')}.")
    swap = report.get("swap")
    out.append(f"- Swap agreement: {pct(swap['agreement'])} of {swap['checked']} rows judged again in reversed order "
               "named the same best and worst." if swap else
               "- Swap agreement: not measured (the judge ran without a swap check).")
    ledger = report.get("ledger") or {}
    if ledger.get("flip_rate") is not None:
        out.append(f"- Flip rate: {pct(ledger['flip_rate'])} of {ledger.get('checked_both_orders')} rows judged in "
                   "both orders changed their verdict with the order shown.")
    if ledger.get("tie_rate") is not None:
        out.append(f"- Tie rate: {pct(ledger['tie_rate'])} of {ledger.get('rows')} rows had no winner.")
    out += [f"- Warning: {w}" for w in report.get("warnings") or []]
    return out


def _size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return label
    return "n>1M"


def adapter_card(*, name: str, license_id: str, base_model: str, datasets: list[str], adapter: dict[str, Any],
                 training: dict[str, Any], metrics: dict[str, Any], lora: dict[str, Any], ab: dict[str, Any] | None,
                 gate: dict[str, Any] | None, judge: dict[str, Any], dataset_card_sha256: str) -> str:
    """The adapter's model card: PEFT's header (base_model, library_name, tags, datasets) and the provenance body.

    `adapter`: sha256 (the run's), published_sha256, sft_adapter_sha256, base_model_recorded, steps;
    `training`: the DPO settings; `metrics`: the final train/eval numbers; `lora`: r, alpha, target modules;
    `ab`: the A/B result (stages/evaluate/tally.py's EvalResult.to_dict(), or None); `gate`: its decision."""
    header = {
        "base_model": base_model,
        "library_name": "peft",
        "license": license_id,
        "pipeline_tag": "text-generation",
        "tags": ["dpo", "lora", "trl", "peft"],
        "datasets": datasets,
    }
    hashes = [("base model", f"`{base_model}`")]
    if adapter.get("base_model_recorded") and adapter["base_model_recorded"] != base_model:
        hashes.append(("base model as training recorded it", f"`{adapter['base_model_recorded']}`"))
    hashes += [("SFT adapter sha256 (the DPO start and its frozen reference)", f"`{adapter['sft_adapter_sha256']}`"),
               ("this adapter's sha256 as trained", f"`{adapter['sha256']}`")]
    if adapter.get("published_sha256") != adapter["sha256"]:
        hashes.append(("sha256 of the files here (`base_model_name_or_path` set to the base model above)",
                       f"`{adapter['published_sha256']}`"))
    hashes.append(("dataset card sha256", f"`{dataset_card_sha256}`"))
    lines = [
        front_matter(header),
        f"# {name}",
        "",
        f"A LoRA adapter for `{base_model}` trained with TRL's DPO on `{datasets[0]}` ({adapter.get('steps')} steps), "
        "starting from an SFT adapter that also served as the frozen reference.",
        "",
        "```python",
        "from peft import AutoPeftModelForCausalLM",
        f"model = AutoPeftModelForCausalLM.from_pretrained(\"{name}\")  # or this folder",
        "```",
        "",
        *_license(license_id),
        "## Provenance",
        "",
        *_rows(hashes),
        "",
        "## Training",
        "",
        *_rows([(k, value(v)) for k, v in {**training, **lora}.items()]),
        "",
        "Final metrics:",
        "",
        *_rows([(k, value(v)) for k, v in metrics.items()]),
        "",
        "## A/B evaluation",
        "",
        *_ab_lines(ab, gate),
        "",
        "## Judge (of the training pairs)",
        "",
        *_rows([(k, value(v)) for k, v in judge.items()]),
    ]
    return "\n".join(lines) + "\n"


def lc_win_rate(result: dict[str, Any]) -> tuple[float | None, Any] | None:
    """The length-controlled win rate and its 95% interval when the A/B result has one (stages/evaluate/tally.py
    `lc_win_rate`: {win_rate, ci95, interval, ...}; an A/B from before it was added has none), else None."""
    lc = result.get("lc_win_rate")
    if not isinstance(lc, dict):
        return None
    rate = lc.get("win_rate")
    return (float(rate) if isinstance(rate, int | float) else None), lc.get("ci95")


def _ab_lines(ab: dict[str, Any] | None, gate: dict[str, Any] | None) -> list[str]:
    if not ab:
        return ["Not run: the run has no A/B result."]
    w = ab.get("win_rate") or {}
    lc = lc_win_rate(ab)
    lc_text = "not computed" if lc is None else pct(lc[0]) + (f" {interval(lc[1])}" if lc[1] is not None else "")
    out = [
        f"`{ab.get('challenger')}` (this adapter) against `{ab.get('baseline')}` (the SFT adapter) on "
        f"{ab.get('judged')} held-out prompts, each pair judged in both orders (a win or a loss only when both "
        "orders agree, else a tie; ties count half).",
        "",
        *_rows([("wins / losses / ties", f"{ab.get('wins')} / {ab.get('losses')} / {ab.get('ties')}"),
                ("win rate (raw, ties half)", f"{pct(w.get('win_rate_all'))} {interval(w.get('ci95_all'))}"),
                ("win rate over decided pairs", f"{pct(w.get('win_rate_decided'))} {interval(w.get('ci95_decided'))}"),
                ("win rate, length-controlled (LC)", lc_text),
                ("interval", f"95% {w.get('interval', '?')}" + (
                    f"; LC: {ab['lc_win_rate'].get('interval')}"
                    if isinstance(ab.get("lc_win_rate"), dict) and ab["lc_win_rate"].get("interval") else "")),
                ("order agreement", pct(ab.get("order_agreement"))),
                ("A/B judge", f"`{ab.get('judge_backend')}` / `{ab.get('judge_model')}`")]),
    ]
    if ab.get("disagree"):
        out += ["", f"Raw and length-controlled disagree: {ab['disagree']}"]
    if gate:
        out += ["", f"Gate: {gate.get('action', '?')} ({gate.get('message', '')})."]
    return out


def _license(license_id: str) -> list[str]:
    """Both cards' License section: the placeholder note until the publisher chooses one."""
    return ["## License", "", LICENSE_NOTE if license_id == "other" else f"`{license_id}`, as chosen by the publisher.",
            ""]
