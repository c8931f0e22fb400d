"""Reading an audit's ``--data`` and ``--labels`` as request ``inputs``, streamed row by row.

- ``.npy``: rows shaped like one input (memory-mapped, so any size streams);
- ``.csv``: a header of feature names, one example per row (sent as feature objects);
- ``.jsonl``: one request body per line; its ``inputs`` (text, base64 image, features, lists);
- a folder: its images (PNG, JPEG, BMP, GIF), in name order, sent as base64.
"""
from __future__ import annotations

import base64
import csv
import json
from pathlib import Path
from typing import Any, Iterator, List, Optional, Tuple

import numpy as np

from .sources import AuditError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def _npy(path: Path) -> Tuple[int, Iterator[Any]]:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise AuditError(f"--data {path}: not a readable .npy array ({exc})") from exc
    if arr.ndim < 2:
        raise AuditError(f"--data {path}: expected rows shaped like one input (n, ...), got shape {list(arr.shape)}")
    return int(arr.shape[0]), (np.asarray(row, dtype=np.float64).tolist() for row in arr)


def _csv_rows(path: Path, names: List[str]) -> Iterator[Any]:
    with open(path, newline="") as f:
        reader = csv.reader(f)
        next(reader)
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(names):
                raise AuditError(f"--data {path}: line {line} has {len(row)} values for {len(names)} columns")
            try:
                yield {n: float(v) for n, v in zip(names, row)}
            except ValueError as exc:
                raise AuditError(f"--data {path}: line {line}: {exc}") from exc


def _csv(path: Path) -> Tuple[int, Iterator[Any]]:
    with open(path, newline="") as f:
        reader = csv.reader(f)
        names = next(reader, None)
        n = sum(1 for row in reader if row)
    if not names:
        raise AuditError(f"--data {path}: empty CSV; the header must name the features")
    return n, _csv_rows(path, [s.strip() for s in names])


def _jsonl_rows(path: Path) -> Iterator[Any]:
    with open(path) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                body = json.loads(line)
            except ValueError as exc:
                raise AuditError(f"--data {path}: line {line_no} is not JSON ({exc})") from exc
            if not isinstance(body, dict) or "inputs" not in body:
                raise AuditError(f"--data {path}: line {line_no} must be a request body {{\"inputs\": ...}}")
            yield body["inputs"]


def _jsonl(path: Path) -> Tuple[int, Iterator[Any]]:
    with open(path) as f:
        n = sum(1 for line in f if line.strip())
    return n, _jsonl_rows(path)


def _folder(path: Path) -> Tuple[int, Iterator[Any]]:
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise AuditError(f"--data {path}: the folder has no images ({', '.join(IMAGE_SUFFIXES)})")
    return len(files), (base64.b64encode(p.read_bytes()).decode() for p in files)


def open_data(path: str, limit: Optional[int] = None) -> Tuple[int, Iterator[Tuple[int, Any]]]:
    """``(n_examples, iterator of (index, inputs))``, at most ``limit`` examples."""
    p = Path(path)
    if not p.exists():
        raise AuditError(f"--data {path}: no such file or folder")
    if p.is_dir():
        n, rows = _folder(p)
    else:
        readers = {".npy": _npy, ".csv": _csv, ".jsonl": _jsonl}
        reader = readers.get(p.suffix.lower())
        if reader is None:
            raise AuditError(f"--data {path}: unknown format; give .npy, .csv, .jsonl or a folder of images")
        n, rows = reader(p)
    if limit is not None:
        n = min(n, limit)
    if n == 0:
        raise AuditError(f"--data {path}: no examples")

    def numbered() -> Iterator[Tuple[int, Any]]:
        for index, inputs in enumerate(rows):
            if index >= n:
                return
            yield index, inputs

    return n, numbered()


def read_labels(path: Optional[str], n: int) -> Optional[np.ndarray]:
    """Class indices, one per example (``.npy`` or one integer per line)."""
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        raise AuditError(f"--labels {path}: no such file")
    try:
        labels = np.load(p) if p.suffix == ".npy" else np.loadtxt(p, dtype=np.int64, ndmin=1)
    except (ValueError, OSError) as exc:
        raise AuditError(f"--labels {path}: expected integers, one per example ({exc})") from exc
    labels = np.asarray(labels).reshape(-1)
    if labels.size < n:
        raise AuditError(f"--labels {path}: {labels.size} labels for {n} examples")
    if not np.all(labels == np.round(labels)):
        raise AuditError(f"--labels {path}: labels must be class indices (integers)")
    return labels[:n].astype(np.int64)
