"""PNG plots of a run's dynamic inference: accuracy vs MACs, and where samples exit."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_accuracy_vs_macs(result: Mapping[str, Any], path: Path) -> Path:
    """Per-exit (anytime) points, the budgeted curve and the GA point, all on the test set."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    b = result["budgeted"]
    ax.plot([r["mean_macs"] / 1e6 for r in b], [100 * r["accuracy"] for r in b], "-", color="tab:blue",
            label="budgeted (MSDNet protocol)")
    for r in result["anytime"]:
        ax.plot(r["macs"] / 1e6, 100 * r["accuracy"], "s", color="tab:gray")
        ax.annotate(r["exit"], (r["macs"] / 1e6, 100 * r["accuracy"]), fontsize=7, xytext=(3, -8),
                    textcoords="offset points")
    t = result["test"]
    ax.plot(result["costs"]["plain_macs"] / 1e6, 100 * t["deepest_accuracy"], "^", ms=9, color="black",
            label="plain network (deepest exit only)")
    ax.plot(t["mean_macs"] / 1e6, 100 * t["accuracy"], "*", ms=14, color="tab:red",
            label=f"GA thresholds ({t['speedup_plain']:.2f}x vs plain)")
    ax.set_xlabel("mean MACs per image (M), honest count")
    ax.set_ylabel("test top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_exit_histogram(result: Mapping[str, Any], path: Path) -> Path:
    """Fraction of test samples leaving at each exit under the GA thresholds."""
    fractions = result["test"]["exit_fractions"]
    names = [f"exit{i + 1}" for i in range(len(fractions) - 1)] + [f"fallback\n({result['fallback']})"]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar(names, [100 * f for f in fractions], color="tab:green")
    ax.set_ylabel("test samples (%)")
    ax.set_title("where samples exit (GA thresholds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
