"""Tiny Parquet catalogs with a planted class signal, job files, and folder snapshots.

Plain functions (not pytest fixtures) so that the bad-input, fault and property tests can build
exactly the broken variant they need: make a good catalog, then overwrite one table.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]


def fsl(m: np.ndarray, t: pa.DataType = pa.float32()) -> pa.Array:
    """A ``fixed_size_list<t>[d]`` column from an ``(n, d)`` matrix."""
    m = np.ascontiguousarray(m)
    return pa.FixedSizeListArray.from_arrays(pa.array(m.ravel(), t), m.shape[1])


def var_list(rows: list[np.ndarray], t: pa.DataType = pa.float32()) -> pa.Array:
    """A variable-length ``list<t>`` column (one entry per row, lengths may differ)."""
    return pa.array([np.asarray(r, dtype=np.float32).tolist() for r in rows], pa.list_(t))


@dataclass
class Catalog:
    """Paths of a written catalog plus its tables, so a test can rewrite one broken copy."""

    folder: Path
    items_path: Path
    classes_path: Path
    items: pa.Table
    classes: pa.Table
    views: tuple[tuple[str, str], ...]
    truth: np.ndarray  # planted class index per item
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def view_cols(self) -> list[str]:
        return [c for _, c in self.views]

    def write_items(self, table: pa.Table, *, row_group_size: int | None = None) -> None:
        pq.write_table(table, self.items_path, row_group_size=row_group_size)
        self.items = table

    def write_classes(self, table: pa.Table) -> None:
        pq.write_table(table, self.classes_path)
        self.classes = table

    def settings_values(self, out: Path | str, **kw: Any) -> dict[str, Any]:
        """Override values for :func:`pairwise_dask.config.load_settings`."""
        d = self.items.schema.field(self.view_cols[0]).type
        base = {"items": str(self.items_path), "classes": str(self.classes_path), "out": str(out),
                "views": self.views, "label": "label" if "label" in self.items.column_names else ""}
        if "dims" not in kw and pa.types.is_fixed_size_list(d):
            base["dims"] = max(1, min(4, d.list_size))  # small d: a few dimensions per mask
        return base | kw

    def settings(self, out: Path | str, **kw: Any):
        from pairwise_dask.config import load_settings

        return load_settings(None, self.settings_values(out, **kw))

    def job_file(self, out: Path | str, *, method: dict[str, Any] | None = None,
                 cluster: dict[str, Any] | None = None, top: dict[str, Any] | None = None,
                 views: list[tuple[str, str]] | None = None, raw: str = "") -> Path:
        """A TOML job file next to the data (``raw`` is appended verbatim, for typos)."""
        lines = [f'items = "{self.items_path}"', f'classes = "{self.classes_path}"', f'out = "{out}"']
        if "label" in self.items.column_names:
            lines.append('label = "label"')
        for k, v in (top or {}).items():
            lines.append(f"{k} = {_toml(v)}")
        lines.append("[views]")
        lines += [f'{v} = "{c}"' for v, c in (views if views is not None else self.views)]
        method = {"dims": 4} | (method or {})
        lines.append("[method]")
        lines += [f"{k} = {_toml(v)}" for k, v in method.items()]
        lines.append("[cluster]")
        lines += [f"{k} = {_toml(v)}" for k, v in ({"workers": 1} | (cluster or {})).items()]
        path = self.folder / "job.toml"
        path.write_text("\n".join(lines) + "\n" + raw)
        return path


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    return repr(v)


def make_catalog(folder: Path, n: int = 60, d: int = 8, k: int = 3, views: tuple[str, ...] = ("a", "b"), *,
                 seed: int = 0, noise: float = 0.6, label: bool = True, truth: np.ndarray | None = None,
                 row_group_size: int | None = None, int_ids: bool = False) -> Catalog:
    """A catalog of ``n`` items in ``k`` classes, ``d``-dimensional views ``emb_<view>``.

    Each view gives every class a random direction; an item is its (planted) class direction
    plus Gaussian noise, so base labels are mostly right and the tourney has signal to find.
    ``truth`` plants the classes explicitly (e.g. all items in one class).
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    y = rng.integers(0, k, n) if truth is None else np.asarray(truth)
    ids = pa.array(np.arange(n, dtype=np.int64) * 7 + 3) if int_ids else pa.array([f"it-{i:05d}" for i in range(n)])
    cols: dict[str, pa.Array] = {"id": ids}
    cls: dict[str, pa.Array] = {"name": pa.array([f"class{c}" for c in range(k)])}
    for v in views:
        centers = rng.normal(size=(k, d))
        centers /= np.linalg.norm(centers, axis=1, keepdims=True)
        x = centers[y] + rng.normal(scale=noise / np.sqrt(d), size=(n, d))
        cols[f"emb_{v}"] = fsl(x.astype(np.float32))
        cls[f"emb_{v}"] = fsl(centers.astype(np.float32))
    if label:
        cols["label"] = pa.array([f"class{c}" for c in y])
    cat = Catalog(folder, folder / "items.parquet", folder / "classes.parquet", pa.table(cols), pa.table(cls),
                  tuple((v, f"emb_{v}") for v in views), y)
    cat.write_items(cat.items, row_group_size=row_group_size)
    cat.write_classes(cat.classes)
    return cat


def replace_column(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    return table.set_column(table.column_names.index(name), name, values)


def matrix(table: pa.Table, col: str) -> np.ndarray:
    """A fixed-size-list column back as an ``(n, d)`` float32 matrix (a copy, to edit)."""
    arr = table.column(col).combine_chunks()
    return np.asarray(arr.flatten(), dtype=np.float32).reshape(len(arr), -1).copy()


# --- the output folder, before and after ------------------------------------------------------

Snapshot = dict[str, bytes | None] | None


def snapshot(folder: Path) -> Snapshot:
    """Every entry under ``folder`` (relative path → bytes, None for folders); None if absent.

    Comparing two snapshots is the test of "the output folder is exactly as it was".
    """
    if not folder.exists():
        return None
    out: dict[str, bytes | None] = {}
    for root, dirs, files in os.walk(folder):
        r = Path(root)
        for dname in dirs:
            out[str((r / dname).relative_to(folder)) + "/"] = None
        for f in files:
            out[str((r / f).relative_to(folder))] = (r / f).read_bytes()
    return out


def tree_bytes(folder: Path, *subfolders: str) -> dict[str, bytes]:
    """Bytes of every file under the given subfolders (for byte-identical rerun checks)."""
    out = {}
    for sub in subfolders:
        for p in sorted((folder / sub).rglob("*")):
            if p.is_file():
                out[str(p.relative_to(folder))] = p.read_bytes()
    return out


def damage_pages(path: Path, column: str) -> None:
    """Rewrite a Parquet file zstd-compressed, then zero bytes inside ``column``'s first data page:
    the footer still reads, the data does not (zstd or level decoding fails)."""
    table = pq.read_table(path)
    pq.write_table(table, path, compression="zstd")
    group = pq.ParquetFile(path).metadata.row_group(0)
    chunk = next(group.column(i) for i in range(group.num_columns)
                 if group.column(i).path_in_schema.split(".")[0] == column)
    data = bytearray(path.read_bytes())
    start = chunk.data_page_offset + 64
    data[start:start + 200] = bytes(200)
    path.write_bytes(bytes(data))


# --- the command line as a subprocess -------------------------------------------------------

def cli_env() -> dict[str, str]:
    """The environment for a CLI or Dask process: this worktree's package first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("DASK_DISTRIBUTED__WORKER__DAEMON", "True")
    return env


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pairwise_dask.cli", *args], capture_output=True, text=True,
                          env=cli_env(), cwd=str(cwd) if cwd else None, timeout=timeout)


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a process we started (and the group it leads, if it was started with a new session)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def scheduler_address(file: Path, timeout: float = 60) -> str:
    """The address in a ``dask scheduler --scheduler-file``, once the file is whole: the scheduler
    writes it in place, so it can exist and be empty (or cut short) for a moment."""
    import json
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            return str(json.loads(file.read_text())["address"])
        except (OSError, ValueError, KeyError):
            if time.monotonic() > deadline:
                raise AssertionError(f"the scheduler did not write {file} within {timeout:g} s") from None
            time.sleep(0.05)
