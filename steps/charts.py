"""PNG charts for the dashboard (matplotlib, headless): the A/B result and the DPO training curves."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

CURVES = ("loss", "rewards/margins", "rewards/accuracies")  # each with its eval_ twin


def _figure(width: float, height: float, ncols: int = 1):  # noqa: ANN202 - matplotlib objects
    import matplotlib

    matplotlib.use("Agg", force=True)  # no display: render to PNG bytes
    import matplotlib.pyplot as plt

    return plt, plt.subplots(1, ncols, figsize=(width, height), dpi=100)


def _png(plt, fig) -> bytes:  # noqa: ANN001
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def win_rate_chart(result: dict[str, Any]) -> bytes:
    """One stacked bar (wins, ties, losses of the challenger) and the raw and the length-controlled win rates, each
    with its 95% interval."""
    plt, (fig, ax) = _figure(7, 2.6)
    n = max(1, result["wins"] + result["ties"] + result["losses"])
    left = 0.0
    for label, count, color in (("wins", result["wins"], "#2e7d32"), ("ties", result["ties"], "#9e9e9e"),
                                ("losses", result["losses"], "#c62828")):
        ax.barh([0], [count / n], left=left, color=color, label=f"{label} {count}")
        left += count / n
    w, lc = result["win_rate"], result.get("lc_win_rate") or {}
    for rate, (lo, hi), y, style, name in ((w["win_rate_all"], w["ci95_all"], 0.55, "o", "win rate"),
                                           (lc.get("win_rate"), lc.get("ci95", (0, 1)), 0.8, "D",
                                            "length-controlled")):
        if rate is not None:
            ax.errorbar([rate], [y], xerr=[[rate - lo], [hi - rate]], fmt=style, color="black", capsize=4,
                        label=f"{name} {rate:.0%} (95% CI)")
    ax.axvline(0.5, color="black", linestyle=":", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.6, 1.1)
    ax.set_yticks([])
    ax.set_xlabel("share of pairs")
    ax.set_title(f"{result['challenger']} vs {result['baseline']}: {n} pairs judged in both orders")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=4, fontsize=8, frameon=False)
    return _png(plt, fig)


def training_curves(history: Sequence[dict[str, Any]]) -> bytes | None:
    """loss, rewards/margins and rewards/accuracies by step, train and eval; None when nothing was logged."""
    if not any(k in log or f"eval_{k}" in log for log in history for k in CURVES):
        return None
    plt, (fig, axes) = _figure(10, 3, ncols=len(CURVES))
    for ax, key in zip(axes, CURVES, strict=True):
        for name, style in ((key, "-o"), (f"eval_{key}", "--s")):
            points = [(log["step"], log[name]) for log in history if name in log and "step" in log]
            if points:
                ax.plot(*zip(*points, strict=True), style, markersize=3, label="eval" if name.startswith("eval_")
                        else "train")
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    fig.suptitle("DPO training")
    return _png(plt, fig)
