"""What a run's ``summary.json`` says: the frame every command's summary shares (items, classes,
method, cluster, versions), the model's parameters, and the counts and figures of the labels.
"""
from __future__ import annotations

import platform
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import __version__
from .config import Settings
from .masks import PairMasks
from .metrics import accuracy, macro_f1, weighted_f1
from .model import thresholds_json
from .passes import Spec, Tally
from .steps import MaskFacts

if TYPE_CHECKING:
    from .job import Prepared

#: the disagreement reasons in the order the summary lists them (the review list's: passes.review_order)
REASON_ORDER = ("annotation+views", "annotation", "views")


def params(s: Settings, masks: dict[str, PairMasks] | dict[str, PairMasks | MaskFacts], items: int, spec: Spec,
            base_keep_margin: float = 0.0, thresholds: list | tuple = ()) -> dict:
    width = {v: m.width if isinstance(m, MaskFacts) else int(m.dims.shape[1]) for v, m in masks.items()}
    return {"thresholds": thresholds_json(spec.thresholds),
            "dims": s.dims, "m": width, "min_items": s.min_items,
            "cos_min": s.cos_min, "diff_min": s.diff_min, "cos_quantile": s.cos_quantile,
            "diff_quantile": s.diff_quantile, "per_pair": s.per_pair_sets, "seed": s.seed,
            "mode": s.mode, "top_t": s.top_t, "items": int(items), "final": s.final, "fuse": s.fuse, "mix": s.mix,
            "refine": s.refine, "keep": s.keep, "fit_on": s.fit_on, "base_keep": s.base_keep,
            "decision": s.decision, "prior": s.prior,
            "rotate": s.rotate, "rotate_sample": s.rotate_sample, "rotate_dims": s.rotate_dims,
            "keep_sample": s.keep_sample,
            "base_keep_margin": base_keep_margin,
            "refine_thresholds": list(thresholds)}


def mask_summary(names: tuple[str, ...], m: PairMasks | MaskFacts) -> dict:
    return {"pairs": int(len(m.pairs)),
            "fallback_pairs": [f"{names[a]} / {names[b]}" for a, b in m.pairs[m.fallback]]}


def _counts(names: tuple[str, ...], arr: np.ndarray) -> dict[str, int]:
    return {n: int(c) for n, c in zip(names, arr)}


def label_summary(s: Settings, names: tuple[str, ...], tally: Tally,
                   masks: dict[str, PairMasks] | dict[str, PairMasks | MaskFacts]) -> dict:
    per_view = {}
    for v in s.view_names:
        pv: dict[str, Any] = {"base_counts": _counts(names, tally.base_counts[v]),
                              "tourney_counts": _counts(names, tally.label_counts[v]),
                              "changed": tally.changed[v]}
        if s.label:
            for kind in ("base", "tourney"):
                conf = tally.conf[f"annotation~{kind}:{v}"]
                pv[f"accuracy_{kind}"] = _figure(accuracy(conf))
                pv[f"macro_f1_{kind}"] = _figure(macro_f1(conf))
        per_view[v] = pv | mask_summary(names, masks[v])
    agreement: dict[str, dict[str, float]] = {}
    for key, conf in tally.conf.items():
        if key.startswith(("base:", "tourney:")):
            kind, pair = key.split(":")
            agreement.setdefault(pair, {})[kind] = weighted_f1(conf)
    dis = tally.disagreements
    reasons = pc.value_counts(dis.column("reason")).to_pylist() if dis.num_rows else []
    # a fixed order (value_counts follows the rows'): the review list's, contradicted annotations first
    reasons.sort(key=lambda r: (REASON_ORDER.index(r["values"]) if r["values"] in REASON_ORDER else 9, r["values"]))
    out: dict[str, Any] = {
        "labelled_items": int(tally.rows),
        "per_view": per_view,
        "agreement_weighted_f1": agreement,
        "disagreements": {"rows": int(dis.num_rows), **{r["values"]: int(r["counts"]) for r in reasons}},
        "fallback_pairs": int(sum(int(m.fallback.sum()) for m in masks.values())),
    }
    if s.label:
        conf = tally.conf["annotation~final"]
        # the figures are over the annotated items only (a null annotation is not a verdict)
        out["final"] = {"accuracy": _figure(accuracy(conf)), "macro_f1": _figure(macro_f1(conf)),
                        "annotated_items": int(conf.sum())}
    return out


def _figure(x: float) -> float | None:
    """A figure over no items (every annotation null) is ``None``: ``null`` in summary.json."""
    return x if np.isfinite(x) else None


def method_of(s: Settings) -> dict:
    """The ``[method]`` options as ``summary.json`` records them."""
    return {"dims": s.dims, "min_items": s.min_items, "cos_min": s.cos_min, "diff_min": s.diff_min,
            "cos_quantile": s.cos_quantile, "diff_quantile": s.diff_quantile,
            "seed": s.seed, "mode": s.mode, "top_t": s.top_t, "final": s.final, "fuse": s.fuse, "mix": s.mix,
            "refine": s.refine, "keep": s.keep, "fit_on": s.fit_on, "base_keep": s.base_keep,
            "decision": s.decision, "prior": s.prior, "rotate": s.rotate, "rotate_sample": s.rotate_sample,
            "rotate_dims": s.rotate_dims, "keep_sample": s.keep_sample}


def frame(s: Settings, prep: Prepared, partitions: int, cluster: dict, timings: dict, run_id: str) -> dict:
    import dask
    import distributed

    return {
        "run_id": run_id,
        "fingerprint": s.fingerprint(),
        "version": __version__,
        "out": s.out,
        "items": {"path": s.items, "files": len(prep.info.files), "rows": int(prep.info.rows),
                  "partitions": partitions, "id": s.id, "label": s.label},
        "classes": {"path": s.classes, "names": list(prep.classes.names)},
        "views": dict(s.views),
        "method": method_of(s),
        "cluster": cluster,  # scheduler, workers at the start and at the end
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "versions": {"python": platform.python_version(), "dask": dask.__version__,
                     "distributed": distributed.__version__, "numpy": np.__version__, "pyarrow": pa.__version__},
    }
