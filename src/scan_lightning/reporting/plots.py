"""Figures of a run: accuracy vs MACs, where samples exit, and the attention maps of the shallow exits.

Each figure carries the run's title (model, data, run name; :func:`run_title`) and a legend outside the axes that
names every exit. ``figure_*`` build the matplotlib figures (logged to W&B as they are); ``plot_*`` save PNGs.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from scan_lightning.evaluation.result import PostFitResult  # noqa: E402
from scan_lightning.models.outputs import exit_name, exit_names  # noqa: E402


def run_title(run_config: Mapping[str, Any] | None) -> str:
    """``<model> on <data> | <run>`` from a run's resolved config: the backbone (and its width when scaled), the
    dataset, and the run directory relative to the log dir (``train/runs/<time>``, ``train/multiruns/<time>/3``)."""
    if not run_config:
        return ""
    backbone = run_config.get("model", {}).get("backbone", {})
    model = str(backbone.get("model") or backbone.get("name", "model"))
    width = backbone.get("width", 1.0)
    model += f" x{width:g}" if width not in (None, 1, 1.0) else ""
    data = run_config.get("data", {})
    dataset = data.get("variant") or str(data.get("_target_", "data")).rsplit(".", 1)[-1].removesuffix("DataModule")
    paths = run_config.get("paths", {})
    out, logs = Path(str(paths.get("output_dir", "run"))), Path(str(paths.get("log_dir", "logs")))
    run = str(out.relative_to(logs)) if out.is_relative_to(logs) else out.name
    return f"{model} on {dataset} | {run}"


def exit_color(i: int) -> Any:
    """One colour per exit (0-based; the ensemble / fallback is the last), the same in every figure."""
    return plt.get_cmap("tab10")(i % 10)


def _finish(fig: Figure, title: str) -> Figure:
    if title:
        fig.suptitle(title, fontsize=9)
    fig.legend(loc="outside right upper", fontsize=8)
    return fig


def figure_accuracy_vs_macs(result: PostFitResult, title: str = "") -> Figure:
    """Per-exit (anytime) points, the ensemble, the budgeted curve and the policy's point, all on the test set."""
    fig, ax = plt.subplots(figsize=(8, 4.2), layout="constrained")
    b = result.budgeted
    ax.plot([r.test.mean_macs / 1e6 for r in b], [100 * r.test.accuracy for r in b], "-", color="tab:gray",
            label="budgeted (MSDNet protocol)")
    for i, a in enumerate(result.anytime):
        name = a.exit if a.exit != "ensemble" else "ensemble (all exits)"
        ax.plot(a.macs / 1e6, 100 * a.accuracy, "s", color=exit_color(i), label=name)
    t = result.test
    ax.plot(result.costs.plain_macs / 1e6, 100 * t.deepest_accuracy, "^", ms=9, color="black",
            label="plain network (deepest exit only)")
    ax.plot(t.mean_macs / 1e6, 100 * t.accuracy, "*", ms=14, color="gold", mec="black",
            label=f"{'GA' if result.search else 'given'} thresholds ({t.speedup_plain:.2f}x vs plain)")
    ax.set_title("test top-1 vs mean MACs", fontsize=9)
    ax.set_xlabel("mean MACs per image (M), honest count")
    ax.set_ylabel("test top-1 (%)")
    ax.grid(alpha=0.3)
    return _finish(fig, title)


def figure_exit_histogram(result: PostFitResult, title: str = "") -> Figure:
    """Percentage of test samples leaving at each exit under the policy, the value on each bar."""
    fractions = [100 * f for f in result.test.exit_fractions]
    names = exit_names(len(fractions) - 1, f"fallback ({result.policy.fallback})")
    fig, ax = plt.subplots(figsize=(7, 3.4), layout="constrained")
    bars = ax.bar(names, fractions, color=[exit_color(i) for i in range(len(names))], label=names)
    ax.bar_label(bars, labels=[f"{f:.1f}%" for f in fractions], fontsize=8, padding=2)
    ax.set_ylim(0, max(fractions + [1.0]) * 1.15)
    ax.set_ylabel("test samples (%)")
    ax.set_title(f"where samples exit ({'GA' if result.search else 'given'} thresholds)", fontsize=9)
    return _finish(fig, title)


def figure_attention_maps(images: torch.Tensor, maps: Mapping[int, torch.Tensor], title: str = "") -> Figure:
    """One row per image: the input, then each attention exit's mask (mean over channels).

    ``images``: (N, C, H, W); ``maps``: 0-based exit index -> (N, H', W') masks in [0, 1].
    """
    exits = sorted(maps)
    n = images.shape[0]
    fig, axes = plt.subplots(n, 1 + len(exits), figsize=(1.6 * (1 + len(exits)), 1.6 * n), squeeze=False,
                             layout="constrained")
    for row in range(n):
        axes[row][0].imshow(_displayable(images[row]), cmap="gray" if images.shape[1] == 1 else None)
        for col, i in enumerate(exits, start=1):
            axes[row][col].imshow(maps[i][row].float().cpu().numpy(), cmap="viridis", vmin=0, vmax=1)
    for col, name in enumerate(["input"] + [exit_name(i) for i in exits]):
        axes[0][col].set_title(name, fontsize=8)
    for ax in axes.flat:
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def _displayable(image: torch.Tensor) -> Any:
    """A normalised (C, H, W) image as an (H, W[, 3]) array in [0, 1]."""
    x = image.float().cpu()
    x = (x - x.min()) / (x.max() - x.min()).clamp(min=1e-8)
    return x[0].numpy() if x.shape[0] == 1 else x[:3].permute(1, 2, 0).numpy()


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` to ``path`` (PNG, 120 dpi) and close it."""
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def save_post_fit_figures(result: PostFitResult, out_dir: Path, title: str = "") -> list[Path]:
    """``accuracy_vs_macs.png`` and ``exit_histogram.png`` of a post-fit result in ``out_dir``."""
    return [save_figure(figure_accuracy_vs_macs(result, title), Path(out_dir) / "accuracy_vs_macs.png"),
            save_figure(figure_exit_histogram(result, title), Path(out_dir) / "exit_histogram.png")]
