"""The Dask orchestration of one run: two streaming passes, a tree reduction, one broadcast.

    pass 1: per partition, moments of every pair side ──tree reduction──▶ merged moments
    client: moments ─▶ pair masks and weights (small)          ─▶ scatter(broadcast=True), once
    pass 2: per partition, labels + tally; each task writes its own labels part
    commit: disagreements sorted, model/, summary.json; staged, then renamed into place

Everything inside a pass is a pure function of one partition plus the broadcast state (see
:mod:`pairwise_dask.passes`), so results do not depend on partitioning, worker count or retries.
"""
from __future__ import annotations

import contextlib
import logging
import platform
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import __version__
from .config import Settings
from .errors import BadInputError
from .io import Commit, ItemsInfo, inspect_items, read_classes, read_items, write_json, write_table
from .masks import fit_masks, pairs_from_ids, resolve_dims
from .metrics import accuracy, macro_f1, weighted_f1
from .model import FittedModel, save
from .passes import Spec, Statistics, Tally, ids_with_hash, label_partition, merge, statistics_partition
from .tourney import use_gather

SPLIT_EVERY = 8


def tree_reduce(tasks: list, combine: Callable[[list], Any], split_every: int = SPLIT_EVERY):
    """Combine delayed results in a tree of fan-in ``split_every`` (order kept: deterministic)."""
    from dask import delayed

    if not tasks:
        raise ValueError("nothing to reduce")
    while len(tasks) > 1:
        tasks = [delayed(combine, pure=True)(tasks[i:i + split_every])
                 for i in range(0, len(tasks), split_every)]
    return tasks[0]


@contextlib.contextmanager
def connect(s: Settings, client: Any = None) -> Iterator[Any]:
    """The given client; else one to ``s.scheduler``; else a multi-process ``LocalCluster``."""
    from distributed import Client, LocalCluster

    if client is not None:
        yield client
    elif s.scheduler:
        with Client(s.scheduler, timeout="30s") as c:
            yield c
    else:
        with LocalCluster(n_workers=s.workers, threads_per_worker=s.threads_per_worker,
                          processes=True, memory_limit=s.memory_limit, silence_logs=logging.ERROR,
                          dashboard_address=":0") as cluster, Client(cluster) as c:
            yield c


def _compute(client: Any, task: Any, label: str, show_progress: bool) -> Any:
    fut = client.compute(task)
    if show_progress:
        from distributed import progress

        print(f"  {label}", flush=True)
        progress(fut)
        print(flush=True)
    return fut.result()


def _find_duplicate(client: Any, parts: list, spec_f: Any, h: int) -> list:
    from dask import delayed

    found = client.compute([delayed(ids_with_hash)(p, spec_f, h) for p in parts])
    return [i for f in found for i in f.result()]


def run(s: Settings, *, client: Any = None, progress: bool = False,
        echo: Callable[[str], None] = lambda _: None) -> dict:
    """Run the whole job described by ``s`` and return its summary (also in ``OUT/summary.json``).

    Raises :class:`BadInputError` for bad input, leaving the output folder as it was.
    """
    from dask import delayed

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    info = inspect_items(s)
    classes = read_classes(s)
    for v, col in s.views:
        d_items, d_cls = info.dims[v], classes.embeddings[v].shape[1]
        if d_items is not None and d_items != d_cls:
            raise BadInputError(f"has dimension {d_items} but the classes' {classes.columns[v]!r} has {d_cls}",
                                file=info.files[0], column=col,
                                hint="Items and class prompts of a view must come from the same model")
    commit = Commit(s.out, fingerprint=s.fingerprint(), overwrite=s.overwrite)
    commit.check_target()
    timings["check"] = time.perf_counter() - t_start

    spec = Spec(id_col=s.id, label_col=s.label, views=s.views, names=classes.names,
                classes=classes.embeddings, cos_min=s.cos_min, diff_min=s.diff_min,
                per_pair=s.per_pair_sets, seed=s.seed, mode=s.mode, top_t=s.top_t)
    with connect(s, client) as c:
        echo(f"Dask dashboard: {c.dashboard_link}")
        n_workers = len(c.scheduler_info().get("workers", {}))
        ddf = read_items(s, info)
        parts = ddf.to_delayed()
        echo(f"Read {info.rows:,} items in {len(parts)} partitions from {len(info.files)} file(s); "
             f"{classes.k} classes; views {', '.join(f'{v}={c_}' for v, c_ in s.views)}; {n_workers} workers")

        # pass 1: statistics
        t = time.perf_counter()
        spec_f = c.scatter(spec, broadcast=True, hash=False)
        root = tree_reduce([delayed(statistics_partition, pure=True)(p, spec_f) for p in parts], merge)
        stats: Statistics = _compute(c, root, "pass 1/2: statistics", progress)
        if stats.duplicate_hash is not None:
            dups = _find_duplicate(c, parts, spec_f, stats.duplicate_hash)
            if len(dups) > 1 and len(set(dups)) < len(dups):
                raise BadInputError("appears more than once", file=s.items, column=s.id,
                                    row=next(d for d in dups if dups.count(d) > 1),
                                    hint="Ids must be unique; drop or rename the duplicates")
        timings["statistics"] = time.perf_counter() - t

        # masks on the client (small)
        t = time.perf_counter()
        masks = {}
        for v in spec.classes:
            k, dim = spec.classes[v].shape
            m = resolve_dims(s.dims, dim)
            pairs, dense = None, True
            if spec.top_t_active:
                # only the pairs among some item's top t can play; with many of them, keep the
                # (P, m) sparse weights and gather per match instead of one (P, d) product
                pairs = pairs_from_ids(stats.pairs[v], k)
                dense = not use_gather(len(pairs), dim, spec.top_t - 1, m)
            masks[v] = fit_masks(stats.moments[v], spec.classes[v], m=m, min_items=s.min_items,
                                 per_pair=spec.per_pair, pairs=pairs, dense=dense)
        spec2 = Spec(**{**spec.__dict__, "masks": masks})
        timings["masks"] = time.perf_counter() - t

        # pass 2: tourney, each task writing its labels part into the staging folder
        t = time.perf_counter()
        staging = commit.begin()
        try:
            labels_dir = staging / "labels"
            labels_dir.mkdir()
            spec2_f = c.scatter(spec2, broadcast=True, hash=False)
            tasks = [delayed(_label_and_write, pure=True)(p, spec2_f, str(labels_dir / f"part.{i:05d}.parquet"))
                     for i, p in enumerate(parts)]
            tally: Tally = _compute(c, tree_reduce(tasks, merge), "pass 2/2: tourney", progress)
            timings["tourney"] = time.perf_counter() - t

            t = time.perf_counter()
            dis = tally.disagreements
            dis = dis.take(pc.sort_indices(dis, [("priority", "descending")]))
            (staging / "disagreements").mkdir()
            write_table(dis, staging / "disagreements" / "part.00000.parquet")
            model = FittedModel(classes.names, classes.embeddings, stats.moments, masks, _params(s, masks))
            save(model, staging / "model")
            timings["write"] = time.perf_counter() - t
            timings["total"] = time.perf_counter() - t_start
            summary = _summary(s, info, classes.names, len(parts), n_workers, stats, tally, masks, timings,
                               commit.run_id)
            write_json(summary, staging / "summary.json")
            commit.publish()
        except BaseException:
            commit.abort()
            raise
    return summary


def _label_and_write(df: Any, spec: Spec, path: str) -> Tally:
    table, tally = label_partition(df, spec)
    write_table(table, path)
    return tally


def _params(s: Settings, masks: dict) -> dict:
    return {"dims": s.dims, "m": {v: int(m.dims.shape[1]) for v, m in masks.items()}, "min_items": s.min_items,
            "cos_min": s.cos_min, "diff_min": s.diff_min, "per_pair": s.per_pair_sets, "seed": s.seed,
            "mode": s.mode, "top_t": s.top_t}


def _counts(names: tuple[str, ...], arr: np.ndarray) -> dict[str, int]:
    return {n: int(c) for n, c in zip(names, arr)}


def _summary(s: Settings, info: ItemsInfo, names: tuple[str, ...], partitions: int, workers: int,
             stats: Statistics, tally: Tally, masks: dict, timings: dict, run_id: str) -> dict:
    import dask
    import distributed

    views = s.view_names
    per_view = {}
    for v in views:
        pv: dict[str, Any] = {"base_counts": _counts(names, tally.base_counts[v]),
                              "tourney_counts": _counts(names, tally.label_counts[v]),
                              "changed": tally.changed[v]}
        if s.label:
            for kind in ("base", "tourney"):
                conf = tally.conf[f"annotation~{kind}:{v}"]
                pv[f"accuracy_{kind}"] = accuracy(conf)
                pv[f"macro_f1_{kind}"] = macro_f1(conf)
        m = masks[v]
        pv["pairs"] = int(len(m.pairs))
        pv["fallback_pairs"] = [f"{names[a]} / {names[b]}" for a, b in m.pairs[m.fallback]]
        per_view[v] = pv
    agreement = {}
    for key, conf in tally.conf.items():
        if key.startswith(("base:", "tourney:")):
            kind, pair = key.split(":")
            agreement.setdefault(pair, {})[kind] = weighted_f1(conf)
    dis = tally.disagreements
    reasons = pc.value_counts(dis.column("reason")).to_pylist() if dis.num_rows else []
    out: dict[str, Any] = {
        "run_id": run_id,
        "fingerprint": s.fingerprint(),
        "version": __version__,
        "items": {"path": s.items, "files": len(info.files), "rows": int(stats.rows), "partitions": partitions},
        "classes": {"path": s.classes, "names": list(names)},
        "views": dict(s.views),
        "method": _params(s, masks),
        "cluster": {"scheduler": s.scheduler or "LocalCluster", "workers": workers},
        "per_view": per_view,
        "agreement_weighted_f1": agreement,
        "disagreements": {"rows": int(dis.num_rows), **{r["values"]: int(r["counts"]) for r in reasons}},
        "fallback_pairs": int(sum(int(m.fallback.sum()) for m in masks.values())),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "versions": {"python": platform.python_version(), "dask": dask.__version__,
                     "distributed": distributed.__version__, "numpy": np.__version__, "pyarrow": pa.__version__},
    }
    if s.label:
        conf = tally.conf["annotation~final"]
        out["final"] = {"accuracy": accuracy(conf), "macro_f1": macro_f1(conf)}
    return out
