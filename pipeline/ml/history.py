"""The per-epoch history CSV that Keras' CSVLogger appends to, read back one row per epoch."""

from __future__ import annotations

import csv
from pathlib import Path

from pipeline.core import io


def write_history(history_csv: Path, dest: Path) -> None:
    """Copy the history CSV with one row per epoch (the last: a resumed run may repeat the epoch it was killed in)."""
    with open(history_csv, newline="") as fh:
        reader = csv.DictReader(fh)
        fields, rows = reader.fieldnames or ["epoch"], {int(r["epoch"]): r for r in reader}
    with io.atomic_path(dest) as tmp, open(tmp, "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows[k] for k in sorted(rows))


def read_history(history_csv: Path) -> dict[str, list[float]]:
    """History rows as columns; on resume the CSV holds earlier epochs too (last row per epoch wins)."""
    with open(history_csv) as fh:
        rows = {int(r["epoch"]): r for r in csv.DictReader(fh)}
    ordered = [rows[k] for k in sorted(rows)]
    keys = [k for k in (ordered[0] if ordered else {}) if k != "epoch"]
    return {k: [float(r[k]) for r in ordered] for k in keys}
