"""What every data set loader returns: the three splits, the label bins and the shot
thresholds, plus what the driver needs to build a backbone for it."""
from __future__ import annotations

import csv
import gzip
import io
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
from torch.utils.data import Dataset


@dataclass
class DatasetSplits:
    """A data set prepared for the DIR protocol.

    Attributes:
        name: the ``--dataset`` name.
        kind: ``"tabular"`` (``x`` tensors, resampling methods allowed), ``"image"``,
            ``"depth"`` (dense targets with a validity mask) or ``"eeg"``.
        train, val, test: ``torch.utils.data.Dataset`` objects yielding
            ``(input, target)`` (depth: ``(image, depth, mask)``).
        train_targets: every training label (depth: the valid training pixels, or a
            sample of them); defines the bins' shot groups and the label prior.
        bins: the label :class:`irda_ext.Bins`, in label units.
        many, few: the shot thresholds used for this data set.
        backbone: the name understood by :func:`irda_ext.train.models.build_backbone`.
        input_dim: number of input features (tabular) or channels (EEG).
        label: what the target is, with its unit, for tables and plots.
        note: a caveat printed with every result (e.g. a synthetic label).
        test_mask: optional boolean mask over the test pixels' bins (NYUD2-DIR's
            ``test_balanced_mask.npy``), applied by the loader already.
    """

    name: str
    kind: str
    train: Dataset
    val: Dataset
    test: Dataset
    train_targets: np.ndarray
    bins: object
    many: int
    few: int
    backbone: str
    input_dim: int = 0
    label: str = "target"
    note: str = ""
    extra: Dict[str, object] = field(default_factory=dict)

    def describe(self) -> str:
        return (f"{self.name}: {len(self.train)} train / {len(self.val)} val / {len(self.test)} test, "
                f"{self.bins.num_bins} bins of {self.bins.width:g} {self.label}, "
                f"shots: many > {self.many}, few < {self.few}" + (f" ({self.note})" if self.note else ""))


def require_file(path: str, what: str, layout: str) -> str:
    """``path`` if it is a file, else a ``FileNotFoundError`` naming it and the layout
    the loader expects."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: expected the file {path!r}, which does not exist. Expected layout: {layout}")
    return path


def csv_rows(text: str, path: str) -> List[Dict[str, str]]:
    """The rows of a headed CSV's text as dicts; a row with more or fewer cells than the
    header is a ``ValueError`` naming the file and the row."""
    reader = csv.DictReader(io.StringIO(text))
    rows = list(reader)
    if not reader.fieldnames:
        raise ValueError(f"{path}: empty file, expected a header row and data rows")
    width = len(reader.fieldnames)
    for i, row in enumerate(rows):
        # DictReader puts surplus cells under the key None and fills short rows with None
        if None in row or any(value is None for value in row.values()):
            cells = width + len(row.get(None, [])) - sum(value is None for value in row.values())
            raise ValueError(f"{path}: row {i + 2} has {cells} cells, the header has {width} "
                             f"({', '.join(reader.fieldnames)})")
    return rows


def read_text(path: str) -> str:
    """A text file as UTF-8 (a byte-order mark, which spreadsheet exports write, is dropped;
    ``.gz`` is decompressed); an unreadable file is a ``ValueError`` naming it."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", newline="", encoding="utf-8-sig") as handle:
            return handle.read()
    except (UnicodeDecodeError, OSError, EOFError) as err:
        raise ValueError(f"{path}: not a readable UTF-8 text file{' (gzip)' if path.endswith('.gz') else ''} "
                         f"({err})") from None


def read_csv_rows(path: str, required: Sequence[str], layout: str) -> List[Dict[str, str]]:
    """Rows of a headed CSV as dicts; a missing column is a ``ValueError`` that names the
    file, the missing and present columns and the expected layout."""
    require_file(path, "CSV", layout)
    rows = csv_rows(read_text(path), path)
    header = list(rows[0]) if rows else []
    missing = [c for c in required if c not in header]
    if rows and missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {header}. Expected layout: {layout}")
    if not rows:
        raise ValueError(f"{path}: no data rows. Expected layout: {layout}")
    return rows


def parse_float(value: str, path: str, column: str, row: int) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: row {row + 2}, column {column!r}: expected a number, got {value!r}") from None


def split_indices(rows: List[Dict[str, str]], path: str, column: str = "split",
                  allowed: Optional[Sequence[str]] = ("train", "val", "test")) -> Dict[str, np.ndarray]:
    """Row indices per value of the split column; unknown split names are an error."""
    out: Dict[str, List[int]] = {}
    for i, row in enumerate(rows):
        name = row[column].strip()
        if allowed is not None and name not in allowed:
            raise ValueError(f"{path}: row {i + 2}: split must be one of {list(allowed)}, got {name!r}")
        out.setdefault(name, []).append(i)
    return {k: np.asarray(v, dtype=np.int64) for k, v in out.items()}
