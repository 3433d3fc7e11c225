"""Per-epoch record of the learned per-bin augmentation and the paper's Fig. 7 plot."""
from __future__ import annotations

import json
from typing import Dict, List, Optional, Sequence

import torch

from ..atomic import atomic_save_figure, atomic_write_text


class GateHistory:
    """One row per epoch: ``{"epoch": e, "v": [B], "mean_gate": [B], "cov_gate": [B]}``.

    Example:
        >>> h = GateHistory(centers=[0.5, 1.5], counts=[10, 1])
        >>> h.record(1, {"v": torch.tensor([0.4, 0.6]), "mean_gate": torch.ones(2), "cov_gate": torch.ones(2)})
        >>> h.series("v", 1)
        [0.6]
    """

    def __init__(self, centers: Sequence[float], counts: Sequence[int]):
        self.centers = [float(c) for c in centers]
        self.counts = [int(c) for c in counts]
        self.rows: List[Dict] = []

    def record(self, epoch: int, gates: Dict[str, torch.Tensor]) -> None:
        row = {"epoch": int(epoch)}
        for name in ("v", "mean_gate", "cov_gate"):
            row[name] = [float(x) for x in gates[name].detach().cpu().reshape(-1)]
        self.rows = [r for r in self.rows if r["epoch"] != row["epoch"]] + [row]

    def series(self, name: str, bin_: int) -> List[float]:
        return [row[name][bin_] for row in self.rows]

    def head_and_tail(self):
        """The bin with the most training samples and the one with the fewest (at least one)."""
        counts = torch.tensor(self.counts)
        head = int(torch.argmax(counts))
        tail = int(torch.argmin(torch.where(counts > 0, counts, counts.max() + 1)))
        return head, tail

    def to_dict(self) -> dict:
        return {"bin_centers": self.centers, "train_counts": self.counts, "epochs": self.rows}

    def load(self, state: dict) -> None:
        self.rows = [dict(r) for r in state["epochs"]]

    def write_json(self, path: str) -> None:
        atomic_write_text(json.dumps(self.to_dict()), path)

    def plot(self, path: str, head_bin: Optional[int] = None, tail_bin: Optional[int] = None,
             label: str = "bin centre", title: str = "") -> None:
        """``v_b`` over the epochs for a tail bin (left) and a head bin (right), as Fig. 7."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        default_head, default_tail = self.head_and_tail()
        head_bin = default_head if head_bin is None else head_bin
        tail_bin = default_tail if tail_bin is None else tail_bin
        epochs = [r["epoch"] for r in self.rows]
        fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), sharey=True)
        for ax, b, kind in ((axes[0], tail_bin, "tail"), (axes[1], head_bin, "head")):
            ax.plot(epochs, self.series("v", b), "o-", markersize=3, color="#c0392b")
            ax.set_title(f"{kind} label: {label} {self.centers[b]:g} ({self.counts[b]} training samples)",
                         fontsize=8)
            ax.set_xlabel("epoch")
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("$v_b$")
        if title:
            fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        atomic_save_figure(fig, path)
