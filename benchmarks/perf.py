"""The performance table of issue 5: the job against its floors, measured in one run.

    PYTHONPATH=. python benchmarks/perf.py --cases small,1m,k1000 --data /tmp/pairwise-bench

For each case it generates (or reuses) a synthetic catalog (``benchmarks/generate.py``), then times
in the same run:

- the I/O floor: one ``pyarrow.parquet.read_table`` of the embedding columns, and streaming the
  same columns row group by row group (``ParquetFile.read_row_group``);
- the NumPy floor: the same math in one process on arrays in RAM (read with pyarrow, base labels,
  float64 moments, masks, decisions, bracket), reusing the package's pure-NumPy core;
- the job end to end (``pairwise_dask.job.run``: Parquet in, every output committed) on a
  ``LocalCluster`` of 1 and of 2 single-threaded worker processes, sampling each worker's RSS;
- the statistics step's achieved GFLOP/s (the flops of the one-hot products it computes, over its
  time) against a plain ``np.dot`` of the same shapes.

It prints one table and writes it, with the machine, versions and command, to ``--results``
(default ``benchmarks/RESULTS.md``). Timings on a shared machine are noisy; the ratios compare
numbers taken minutes apart in the same run.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate import generate  # noqa: E402

from pairwise_dask import moments as _moments  # noqa: E402
from pairwise_dask.arrays import embedding_matrix, hash_ids, normalize_rows  # noqa: E402
from pairwise_dask.base import base_labels  # noqa: E402
from pairwise_dask.masks import fit_masks, pairs_from_ids, resolve_dims  # noqa: E402
from pairwise_dask.moments import filtered_moments  # noqa: E402
from pairwise_dask.tourney import (masked_margin, pair_decisions, play_bracket, play_bracket_gather,  # noqa: E402
                                   play_pairs, top_classes, gathers)


@dataclass
class Case:
    """One row of the table: a catalog and how the job labels it."""

    name: str
    items: int
    dim: int = 768
    views: int = 2
    classes: int = 13
    group_size: int = 0
    dtype: str = "float32"
    compression: str = "none"
    mode: str = "bracket"
    top_t: int = 16
    row_group: int = 65536
    workers: tuple[int, ...] = (1, 2)
    memory_limit: str = "auto"
    numpy_floor: bool = True
    files: int = 1
    packed: bool = False
    defaults: bool = False  # the job's default method (not the article's, which the floors compute)
    catalog: str = ""  # another case's catalog folder (same data, another way of running it)
    options: tuple[tuple[str, Any], ...] = ()  # job options on top (e.g. the defaults + rotate_dims)

    def catalog_key(self) -> dict:
        return {"items": self.items, "dim": self.dim, "views": self.views, "classes": self.classes,
                "group_size": self.group_size, "dtype": self.dtype, "compression": self.compression,
                "row_group": self.row_group, "files": self.files, "packed": self.packed}


CASES: dict[str, Case] = {c.name: c for c in [
    Case("tiny", 20_000, row_group=8192),
    Case("100k", 100_000, row_group=16384),
    Case("100k-packed", 100_000, row_group=16384, packed=True),
    Case("100k-f16", 100_000, row_group=16384, dtype="float16"),
    Case("100k-snappy", 100_000, row_group=16384, compression="snappy"),
    Case("1m", 1_000_000),
    # the issue's own catalog: float32 lists, snappy (its 6.2 GB, 29 s read, 91 s script)
    Case("1m-snappy", 1_000_000, compression="snappy"),
    Case("1m-packed", 1_000_000, packed=True),
    Case("1m-f16-packed", 1_000_000, dtype="float16", packed=True),
    # the default method (rotate = pca, discriminant, refine = 2): what its accuracy costs
    Case("1m-packed-defaults", 1_000_000, packed=True, numpy_floor=False, defaults=True, catalog="1m-packed"),
    Case("k13-200k", 200_000, row_group=32768, packed=True),
    Case("k1000", 200_000, classes=1000, group_size=25, mode="top-t", top_t=16, row_group=32768, packed=True),
    # the same catalog with the default method (rotation, fused keep, two refine rounds), top-t
    Case("k1000-defaults", 200_000, classes=1000, group_size=25, row_group=32768, packed=True, workers=(2,),
         numpy_floor=False, defaults=True, catalog="k1000", options=(("mode", "top-t"), ("top_t", 16))),
    # larger than memory (1.5× this machine's 23.6 GiB): one view, 2 workers only, a memory limit;
    # no in-RAM NumPy floor is possible, so the job is compared with streaming the column once
    Case("12.5m", 12_500_000, views=1, row_group=65536, workers=(2,), memory_limit="4GiB",
         numpy_floor=False, files=25, packed=True),
    # the same catalog with the default method: rotate = pca streams x·R in every pass
    Case("12.5m-defaults", 12_500_000, views=1, row_group=65536, workers=(2,), memory_limit="4GiB",
         numpy_floor=False, files=25, packed=True, defaults=True, catalog="12.5m"),
    # ... with half the principal axes: every pass after the rotation on d/2 coordinates
    Case("12.5m-defaults-half-axes", 12_500_000, views=1, row_group=65536, workers=(2,), memory_limit="4GiB",
         numpy_floor=False, files=25, packed=True, defaults=True, catalog="12.5m",
         options=(("rotate_dims", 0.5),)),
]}

VIEW_NAMES = ("image", "text", "view3", "view4")


def _views(c: Case) -> list[str]:
    return list(VIEW_NAMES[:c.views])


def ensure_catalog(c: Case, root: Path) -> tuple[Path, dict]:
    """The case's catalog under ``root``, generated unless an identical one is there."""
    folder = root / (c.catalog or c.name)
    meta = folder / "catalog.json"
    key = c.catalog_key()
    if meta.exists():
        desc = json.loads(meta.read_text())
        if desc.get("key") == key:
            return folder, desc
        shutil.rmtree(folder)
    desc = generate(folder, items=c.items, dim=c.dim, views=_views(c), classes=c.classes,
                    group_size=c.group_size, row_group=c.row_group, dtype=c.dtype,
                    compression=c.compression, files=c.files, packed=c.packed,
                    processes=2 if c.files > 1 else 1)
    desc["key"] = key
    meta.write_text(json.dumps(desc, indent=2) + "\n")
    return folder, desc


def _items_path(folder: Path, c: Case) -> str:
    return str(folder / "items.parquet") if c.files == 1 else str(folder / "items")


def _files(folder: Path, c: Case) -> list[str]:
    return [str(folder / "items.parquet")] if c.files == 1 else sorted(str(p) for p in (folder / "items").glob("*.parquet"))


# --- floors --------------------------------------------------------------------------------

def drop_page_cache() -> bool:
    """Evict the OS page cache (Linux, root) so the next read comes from the disk; False if not allowed."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
        return True
    except OSError:
        return False


def io_floor(folder: Path, c: Case, cold: bool = False) -> dict:
    """One pyarrow read of the embedding columns; the same columns streamed by row group.

    Both are timed with the catalog in the page cache (read once first, untimed), as the job finds
    it when it runs after the floors: the ratio job/IO then compares like with like. With ``cold``
    the read is also timed from the disk (page cache dropped first; needs root, else NaN).
    """
    cols = _views(c)
    files = _files(folder, c)
    out = {"io_read": float("nan"), "io_read_cold": float("nan")}
    if c.numpy_floor:  # (catalogs larger than memory have no in-memory floor and cannot be warm)
        if cold and drop_page_cache():
            gc.collect()
            t = time.perf_counter()
            tables = [pq.read_table(f, columns=cols) for f in files]
            out["io_read_cold"] = time.perf_counter() - t
            del tables
        for f in files:  # warm the page cache: untimed
            pq.read_table(f, columns=cols)
        gc.collect()
        t = time.perf_counter()
        tables = [pq.read_table(f, columns=cols) for f in files]
        out["io_read"] = time.perf_counter() - t
        del tables
    gc.collect()
    t = time.perf_counter()
    n = 0
    for f in files:
        pf = pq.ParquetFile(f)
        for g in range(pf.num_row_groups):
            tb = pf.read_row_group(g, columns=cols)
            for col in cols:  # to NumPy, as a pass does (zero-copy for float32)
                x = embedding_matrix(tb.column(col), name=col, dim=c.dim)
                n += x.shape[0]
            del tb
    out["io_stream"] = time.perf_counter() - t
    return out


def numpy_floor(folder: Path, c: Case, m: int = 100, seed: int = 0) -> dict:
    """The same math in one process on arrays in RAM, timed per step (the package's NumPy core)."""
    out = {"np_read": 0.0, "np_base": 0.0, "np_stats": 0.0, "np_masks": 0.0, "np_tourney": 0.0}
    gc.collect()
    t = time.perf_counter()
    table = pa.concat_tables([pq.read_table(f, columns=["id"] + _views(c)) for f in _files(folder, c)])
    classes_t = pq.read_table(folder / "classes.parquet")
    id_hash = hash_ids(table.column("id"))
    out["np_read"] += time.perf_counter() - t
    for v in _views(c):
        t = time.perf_counter()
        x = normalize_rows(embedding_matrix(table.column(v), name=v, dim=c.dim), name=v)
        cls = normalize_rows(embedding_matrix(classes_t.column(v), name=v), name=v)
        out["np_read"] += time.perf_counter() - t
        t = time.perf_counter()
        base = base_labels(x, cls)
        out["np_base"] += time.perf_counter() - t
        t = time.perf_counter()
        mom = filtered_moments(x, base.scores, base.label, cos_min=-1.0, diff_min=0.0, per_pair=False)
        out["np_stats"] += time.perf_counter() - t
        t = time.perf_counter()
        k, d = cls.shape
        mm = resolve_dims(m, d)
        topt = c.mode == "top-t" and c.top_t < k
        players = top_classes(base.scores, c.top_t) if topt else None
        pairs = pairs_from_ids(play_pairs(players, k), k) if topt else None
        dense = not gathers(k, d, mm, c.top_t if c.mode == "top-t" else None)  # the job's rule
        masks = fit_masks(mom, cls, m=mm, min_items=5, per_pair=False, pairs=pairs, dense=dense)
        out["np_masks"] += time.perf_counter() - t
        t = time.perf_counter()
        if dense:
            res = play_bracket(pair_decisions(x, masks), masks.pair_index(), id_hash, seed=seed, players=players)
        else:
            res = play_bracket_gather(x, masks, masks.pair_index(), id_hash, seed=seed, players=players)
        masked_margin(x, masks, res.final_pair, res.final_raw)
        out["np_tourney"] += time.perf_counter() - t
        out.setdefault("pairs", 0)
        out["pairs"] += len(masks.pairs)
        del x, base, masks, res
    out["np_total"] = sum(out[k] for k in ("np_read", "np_base", "np_stats", "np_masks", "np_tourney"))
    del table
    gc.collect()
    return out


def straightforward_script(folder: Path, c: Case, m: int = 100, seed: int = 0) -> dict:
    """The issue's reference point: a straightforward single-process NumPy script of the same math.

    Read the table with pyarrow; per view: normalise, cosine argmax, float64 mean and variance of
    each class's rows (a boolean-mask copy per class), then per pair the cross-deviation ratio, the
    top-m mask, prompt-difference weights, and a vectorised knockout bracket with a seeded random
    order. No blocking, no quantisation, no streaming: what one would write first. (Recomputing the
    moments per pair, as a literal reading of the method does, copies every class 12 times and took
    ~225 s here; per class is the fairer baseline.) Timed as read and compute.
    """
    gc.collect()
    t = time.perf_counter()
    table = pa.concat_tables([pq.read_table(f, columns=["id"] + _views(c)) for f in _files(folder, c)])
    classes_t = pq.read_table(folder / "classes.parquet")
    mats = {}
    for v in _views(c):
        col = table.column(v).combine_chunks()
        if pa.types.is_fixed_size_binary(col.type):
            mats[v] = np.frombuffer(col.buffers()[1], dtype=np.float32).reshape(len(col), -1)
        else:
            mats[v] = col.flatten().to_numpy().astype(np.float32, copy=False).reshape(len(col), -1)
    del table  # the matrices are views of its buffers: nothing is freed, nothing is copied
    read = time.perf_counter() - t
    t = time.perf_counter()
    rng = np.random.default_rng(seed)
    for v in _views(c):
        x = mats[v] / np.linalg.norm(mats[v], axis=1, keepdims=True)
        cls = np.stack(classes_t.column(v).to_numpy(zero_copy_only=False)).astype(np.float32)
        cls /= np.linalg.norm(cls, axis=1, keepdims=True)
        k, d = cls.shape
        lab = np.argmax(x @ cls.T, axis=1)
        pairs = [(a, b) for a in range(k) for b in range(a + 1, k)]
        count = np.bincount(lab, minlength=k)
        mean, var = np.zeros((k, d)), np.zeros((k, d))
        for a in range(k):
            if count[a]:
                xa = x[lab == a].astype(np.float64)
                mean[a], var[a] = xa.mean(0), xa.var(0)
                del xa
        w = np.zeros((len(pairs), d), np.float32)
        for p, (a, b) in enumerate(pairs):
            if count[a] < 5 or count[b] < 5:
                mask = np.argsort(-np.abs(cls[a] - cls[b]))[:m]
            else:
                ma, va, mb, vb = mean[a], var[a], mean[b], var[b]
                r = np.sqrt(((ma - mb) ** 2 + va + vb) / 2 / np.sqrt(va * vb))
                mask = np.argsort(-r)[:m]
            ca, cb = cls[a, mask], cls[b, mask]
            w[p, mask] = ca / np.linalg.norm(ca) - cb / np.linalg.norm(cb)
        dec = x @ w.T
        index = np.full((k, k), -1)
        for p, (a, b) in enumerate(pairs):
            index[a, b] = p
        n = len(x)
        alive = np.tile(np.arange(k), (n, 1))
        rows = np.arange(n)[:, None]
        while alive.shape[1] > 1:
            alive = np.take_along_axis(alive, np.argsort(rng.random(alive.shape), axis=1), axis=1)
            h = alive.shape[1] // 2
            lo = np.minimum(alive[:, 0:2 * h:2], alive[:, 1:2 * h:2])
            hi = np.maximum(alive[:, 0:2 * h:2], alive[:, 1:2 * h:2])
            win = np.where(dec[rows, index[lo, hi]] >= 0, lo, hi)
            alive = np.concatenate([win, alive[:, 2 * h:]], axis=1)
        del x, dec, alive
    compute = time.perf_counter() - t
    del mats
    gc.collect()
    return {"script_read": read, "script_compute": compute, "script_total": read + compute}


#: Up to this many classes the table gives the statistics step a GEMM rate and runs the
#: straightforward script (its one-hot products are k times the work of the sums they compute).
GEMM_MAX_K = 64


def gemm_reference(c: Case) -> dict:
    """GFLOP/s of a plain ``np.dot`` of the statistics step's shapes: ``(k × r) @ (r × d)`` float64."""
    if c.classes > GEMM_MAX_K:
        return {"gemm_gflops": float("nan")}
    r = _moments.MOMENT_ROWS
    rng = np.random.default_rng(0)
    a = np.zeros((r, c.classes))
    a[np.arange(r), rng.integers(0, c.classes, r)] = 1.0
    b = rng.standard_normal((r, c.dim))
    np.dot(a.T, b)
    reps = 0
    t = time.perf_counter()
    while time.perf_counter() - t < 1.0:
        np.dot(a.T, b)
        reps += 1
    return {"gemm_gflops": 2.0 * r * c.classes * c.dim * reps / (time.perf_counter() - t) / 1e9}


# --- the job -------------------------------------------------------------------------------

class RssSampler:
    """Samples every worker's RSS (``client.run`` + psutil) in a background thread; keeps the peak."""

    def __init__(self, client, every: float = 0.25) -> None:
        self.client, self.every = client, every
        self.peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def _rss() -> int:
        import psutil

        return psutil.Process().memory_info().rss

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                for w, rss in self.client.run(self._rss).items():
                    self.peak[w] = max(self.peak.get(w, 0), rss)
            except Exception:  # noqa: BLE001 - a worker restarting between samples is not fatal
                pass
            self._stop.wait(self.every)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_job(folder: Path, c: Case, workers: int, out: Path) -> dict:
    """The job end to end on a fresh LocalCluster of ``workers`` single-threaded processes."""
    import logging

    from distributed import Client, LocalCluster

    from pairwise_dask import job
    from pairwise_dask.config import load_settings

    views = tuple((v, v) for v in _views(c))
    # the same math as the NumPy floor: the article's method (no refine rounds, no rotation,
    # cosine decisions on m = 100 dimensions); or the job's defaults
    article = {"mode": c.mode, "top_t": c.top_t, "refine": 0, "mix": 0.0, "final": "confident-view", "dims": 100,
               "fit_on": "view", "decision": "cosine", "rotate": "none"}
    s = load_settings(None, {"items": _items_path(folder, c), "classes": str(folder / "classes.parquet"),
                             "out": str(out), "views": views, "label": "label", "overwrite": True,
                             "workers": workers} | ({} if c.defaults else article) | dict(c.options))
    # Dask's "auto" limit is the machine's memory times threads / cores: half of it for 1 worker of
    # 1 thread here. Give each worker its share of the whole machine instead, so that 1 and 2
    # workers run the same plan (the job keeps the items in memory when they fit a third of it).
    import psutil

    limit = (int(psutil.virtual_memory().total / workers) if c.memory_limit == "auto" else c.memory_limit)
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, memory_limit=limit,
                      silence_logs=logging.ERROR, dashboard_address=":0") as cluster, Client(cluster) as client:
        client.wait_for_workers(workers)
        with RssSampler(client) as rss:
            t = time.perf_counter()
            summary = job.run(s, client=client)
            total = time.perf_counter() - t
    tm = summary["timings_s"]
    shutil.rmtree(out, ignore_errors=True)
    res = {"total": total, "read": tm.get("read", 0.0), "statistics": tm["statistics"], "masks": tm["masks"], "tourney": tm["tourney"],
           "write": tm["write"], "rss_peak": max(rss.peak.values()) if rss.peak else float("nan"),
           "pairs": sum(v["pairs"] for v in summary["per_view"].values())}
    pv = summary["per_view"]
    res["acc"] = {v: (round(p.get("accuracy_base", float("nan")), 3), round(p.get("accuracy_tourney", float("nan")), 3))
                  for v, p in pv.items()}
    return res


# --- the table -----------------------------------------------------------------------------

COLUMNS = [
    ("case", "case"), ("N", "N"), ("k", "k"), ("V", "V"), ("in", "input"), ("GB", "Parquet GB"),
    ("io_read", "IO read s"), ("io_read_cold", "IO read cold s"), ("io_stream", "IO stream s"),
    ("script_total", "script s"), ("np_total", "NumPy s"), ("np_stats", "NumPy stats s"),
    ("np_tourney", "NumPy tourney s"),
    ("j1_total", "job 1w s"), ("j2_total", "job 2w s"), ("jcold_total", "job 2w cold s"), ("j2_read", "2w read s"),
    ("j2_statistics", "2w stats s"),
    ("j2_masks", "2w masks s"), ("j2_tourney", "2w tourney s"), ("j2_write", "2w write s"),
    ("r_script", "job/script"), ("r_np", "job/NumPy"), ("r_io", "job/IO"), ("r_io_cold", "cold job/IO"),
    ("speedup", "1→2w"),
    ("rss1", "peak RSS 1w GB"), ("rss2", "peak RSS/worker 2w GB"), ("pairs", "pairs fitted"),
    ("stats_gflops", "stats GFLOP/s"), ("gemm_gflops", "np.dot GFLOP/s"),
]


def _fmt(v) -> str:
    if isinstance(v, float):
        if v != v:
            return "–"
        return f"{v:.2f}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def table(rows: list[dict], kept: list[str] | None = None) -> str:
    """The markdown table; ``kept`` are earlier runs' rows (already formatted) placed first."""
    head = "| " + " | ".join(h for _, h in COLUMNS) + " |"
    sep = "|" + "|".join("---" for _ in COLUMNS) + "|"
    body = ["| " + " | ".join(_fmt(r.get(k, float("nan"))) for k, _ in COLUMNS) + " |" for r in rows]
    return "\n".join([head, sep, *(kept or []), *body])


def previous(path: Path, replaced: set[str]) -> tuple[list[str], list[str], list[str]]:
    """From an earlier RESULTS.md: its table rows (minus the cases run again), commands, accuracy lines."""
    if not path.exists():
        return [], [], []
    text = path.read_text().splitlines()
    rows, cmds, accs = [], [], []
    start = next((i for i, line in enumerate(text) if line.startswith("| case |")), None)
    if start is not None:
        # an older table may have other columns: carry each cell over by its header, "–" if new
        old = [h.strip() for h in text[start].strip("|").split("|")]
        i = start + 2
        while i < len(text) and text[i].startswith("| "):
            cells = dict(zip(old, (v.strip() for v in text[i].strip("|").split("|"))))
            if cells.get("case") not in replaced:
                rows.append("| " + " | ".join(cells.get(h, "–") for _, h in COLUMNS) + " |")
            i += 1
    for line in text:
        if line.startswith("    PYTHONPATH=. python benchmarks/perf.py"):
            cmds.append(line.strip())
        if line.startswith("- ") and ": (base, tourney)" in line and line[2:].split(":")[0] not in replaced:
            accs.append(line)
    return rows, cmds, accs


def run_case(c: Case, root: Path, cold: bool = False) -> dict:
    folder, desc = ensure_catalog(c, root)
    row: dict = {"case": c.name, "N": f"{c.items:,}", "k": c.classes, "V": c.views,
                 "in": f"{c.dtype}/{c.compression}" + ("/packed" if c.packed else "/list"),
                 "GB": desc["bytes"] / 1e9}
    print(f"[{c.name}] catalog {desc['bytes'] / 1e9:.2f} GB", flush=True)
    row.update(io_floor(folder, c, cold))
    print(f"[{c.name}] io {row['io_read']:.2f} s read ({row['io_read_cold']:.2f} s from the disk), "
          f"{row['io_stream']:.2f} s streamed", flush=True)
    if c.numpy_floor:
        row.update(numpy_floor(folder, c))
        print(f"[{c.name}] numpy {row['np_total']:.2f} s", flush=True)
        if c.classes <= GEMM_MAX_K:
            row.update(straightforward_script(folder, c))
            print(f"[{c.name}] straightforward script {row['script_total']:.2f} s "
                  f"({row['script_read']:.2f} read + {row['script_compute']:.2f} compute)", flush=True)
    row.update(gemm_reference(c))
    for w in c.workers:
        j = run_job(folder, c, w, root / f"out-{c.name}-{w}w")
        print(f"[{c.name}] job {w}w {j['total']:.2f} s, peak RSS {j['rss_peak'] / 1e9:.2f} GB, acc {j['acc']}", flush=True)
        for k_, v in j.items():
            row[f"j{w}_{k_}"] = v
        row[f"rss{w}"] = j["rss_peak"] / 1e9
        row["pairs"] = j["pairs"]
        row["acc"] = j["acc"]
    if cold and c.numpy_floor and row["io_read_cold"] == row["io_read_cold"] and drop_page_cache():
        # the nightly run's situation: the catalog on disk, not in memory
        j = run_job(folder, c, max(c.workers), root / f"out-{c.name}-cold")
        print(f"[{c.name}] job {max(c.workers)}w from the disk {j['total']:.2f} s", flush=True)
        row["jcold_total"] = j["total"]
        row["r_io_cold"] = j["total"] / row["io_read_cold"]
    jw = max(c.workers)
    jt = row[f"j{jw}_total"]
    row["r_np"] = jt / row["np_total"] if c.numpy_floor else float("nan")
    row["r_script"] = jt / row["script_total"] if "script_total" in row else float("nan")
    row["r_io"] = jt / (row["io_read"] if c.numpy_floor else row["io_stream"])
    if 1 in c.workers and 2 in c.workers:
        row["speedup"] = row["j1_total"] / row["j2_total"]
    if c.classes <= GEMM_MAX_K and c.numpy_floor:
        flops = 2 * 2.0 * c.items * c.classes * c.dim * c.views  # two GEMMs per view
        row["stats_gflops"] = flops / row["np_stats"] / 1e9
    return row


def machine() -> str:
    import dask
    import distributed
    import psutil

    cpu = "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"- machine: {platform.node()}, {cpu}, {os.cpu_count()} cores, "
            f"{psutil.virtual_memory().total / 2**30:.1f} GiB RAM, {platform.platform()}\n"
            f"- versions: Python {platform.python_version()}, NumPy {np.__version__}, pyarrow {pa.__version__}, "
            f"dask {dask.__version__}, distributed {distributed.__version__}")


BY_HAND = "## Notes on particular runs"

NOTES = """\
Reading the table: seconds are wall-clock. *IO read* is one `pyarrow.parquet.read_table` of the
embedding columns with the catalog in the page cache (read once first, untimed), as the job finds
it; *IO read cold* is the same read right after dropping the page cache (`--cold`, needs root), and
*job 2w cold* the 2-worker job run again from the disk the same way (*cold job/IO* = their ratio);
*IO stream* reads the same columns row group by row group into NumPy. *script*
is a straightforward single-process NumPy script of the article's math (`straightforward_script`:
read the table, normalise, argmax, float64 moments per class, masks, `X Wᵀ`, a vectorised bracket).
*NumPy* is the same math in one process on arrays in RAM (the package's NumPy core; BLAS may use
both cores). *job* is `pairwise_dask.job.run` end to end (Parquet in, labels/disagreements/model/
summary.json committed) on a LocalCluster of 1 or 2 single-threaded worker processes, each given its
share of the machine's memory; its step columns are the job's own timings for the 2-worker run
(*read*: decoding and checking the items once, when they are kept in worker memory). The job runs
the article's settings (bracket, m = 100, cosine, no rotation, no refine) except in the
`-defaults` row. *job/script*, *job/NumPy* and *job/IO* use the 2-worker job. *peak RSS* is the
largest RSS any worker reached (sampled every 0.25 s). *stats GFLOP/s* is the statistics step of
the NumPy floor counted as the flops of its two one-hot products per view, `onehotᵀ @ Xq` and
`onehotᵀ @ Xq²` (2·2·N·k·d per view). Since session 6 the package computes those products as
segment sums of label-sorted rows (the same numbers bit for bit, without the multiplications by
zero), so this is an equivalent rate and can exceed *np.dot GFLOP/s*, a bare float64 `np.dot` of
one block's shape (k × 8192) @ (8192 × d) on this machine. For k = 1000 no rate is given.

This is a 2-core machine, sometimes shared with other work: absolute seconds are noisy, and the
*np.dot GFLOP/s* column shows by how much (the same product measured 0.7 to 50 GFLOP/s at
different moments). Ratios compare numbers from the same run, minutes apart. Catalogs up to 6 GB
fit in the page cache, so apart from the cold columns the floors and the job read them from
memory; the 38.5 GB one cannot be cached (disk ≈ 1.2 GB/s). Rows measured in earlier runs (older
code) are kept with their command above; the notes below say which session each row comes from.
"""


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", default="100k,1m,k1000", help=f"comma separated, from: {', '.join(CASES)}")
    p.add_argument("--data", default="/tmp/pairwise-bench", help="where catalogs are generated (reused)")
    p.add_argument("--results", default=str(Path(__file__).resolve().parent / "RESULTS.md"))
    p.add_argument("--keep-data", action="store_true", help="keep the generated catalogs afterwards")
    p.add_argument("--cold", action="store_true",
                   help="also time the read and the 2-worker job from the disk (drops the page cache: root)")
    p.add_argument("--merge", action="store_true",
                   help="keep the rows of other cases already in --results (one table over several runs)")
    a = p.parse_args(argv)
    root = Path(a.data)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in [n.strip() for n in a.cases.split(",") if n.strip()]:
        c = CASES[name]
        rows.append(run_case(c, root, a.cold))
        if not a.keep_data:
            shutil.rmtree(root / c.name, ignore_errors=True)
        print(table(rows), flush=True)
    cmd = "PYTHONPATH=. python benchmarks/perf.py " + " ".join(sys.argv[1:])
    kept, cmds, old_accs = previous(Path(a.results), {r["case"] for r in rows}) if a.merge else ([], [], [])
    cmds = [c for c in cmds if c != cmd] + [cmd]
    accs = old_accs + [f"- {r['case']}: (base, tourney) accuracy per view, 2-worker job: {r.get('acc')}"
                       for r in rows]
    commands = "\n".join(f"    {c}" for c in cmds)
    # a hand-written section at the end (findings about particular runs) survives a --merge
    old = Path(a.results).read_text() if a.merge and Path(a.results).exists() else ""
    by_hand = old[old.index(BY_HAND):] if BY_HAND in old else ""
    text = (f"# Benchmark results\n\nLast measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with\n\n"
            f"{commands}\n\n{machine()}\n\n{table(rows, kept)}\n\n" + "\n".join(accs) + f"\n\n{NOTES}"
            + (f"\n{by_hand}" if by_hand else ""))
    Path(a.results).write_text(text)
    print(f"\nwrote {a.results}")


if __name__ == "__main__":
    main()
