"""What a run reports: the paper's table, the per-bin MAE plot, JSON-safe results."""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from ..atomic import atomic_save_figure
from ..metrics import per_bin_mae


def _fmt(value: Optional[float], width: int = 8) -> str:
    return f"{'-':>{width}}" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:>{width}.3f}"


def format_table(rows: Sequence[Tuple[str, Dict]], title: str = "", with_counts: bool = True) -> str:
    """Rows of ``(name, shot_metrics)`` laid out like the paper's Table 3: MAE and GM for
    All / Many / Med. / Few."""
    groups = ("all", "many", "medium", "few")
    heads = ("All", "Many", "Med.", "Few")
    name_width = max([len("Metrics")] + [len(name) for name, _ in rows]) + 2
    lines = [title] if title else []
    lines.append(f"{'Metrics':<{name_width}}{'MAE':>8}{'':24}  {'GM':>8}")
    lines.append(f"{'Shot':<{name_width}}" + "".join(f"{h:>8}" for h in heads) + "  " + "".join(f"{h:>8}" for h in heads))
    for name, metrics in rows:
        lines.append(f"{name:<{name_width}}" + "".join(_fmt(metrics[g]["mae"]) for g in groups) + "  "
                     + "".join(_fmt(metrics[g]["gm"]) for g in groups))
    if with_counts and rows:
        counts = rows[0][1]
        lines.append(f"{'(samples)':<{name_width}}" + "".join(f"{counts[g]['count']:>8d}" for g in groups))
    return "\n".join(lines)


def plot_per_bin_mae(path: str, pred, target, train_targets, bins, title: str, label: str) -> None:
    """Per-bin test MAE along the label axis over the training label histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centers = bins.centers.numpy()
    counts = bins.counts(torch.as_tensor(train_targets, dtype=torch.float64), clamp=True).numpy()
    mae = per_bin_mae(pred, target, bins).numpy()
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(centers, counts, width=bins.width, color="#c8d3e0", label="training samples per bin")
    ax.set_xlabel(label)
    ax.set_ylabel("training samples")
    ax2 = ax.twinx()
    valid = ~np.isnan(mae)
    ax2.plot(centers[valid], mae[valid], "o-", color="#c0392b", markersize=3, label="test MAE per bin")
    ax2.set_ylabel("test MAE")
    ax2.set_ylim(bottom=0)
    handles = ax.get_legend_handles_labels()
    handles2 = ax2.get_legend_handles_labels()
    ax.legend(handles[0] + handles2[0], handles[1] + handles2[1], loc="upper right", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    atomic_save_figure(fig, path)


def json_safe(value):
    """``value`` with NaN/inf as None and numpy scalars as Python numbers, for ``json.dumps``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return json_safe(value.item())
    return value
