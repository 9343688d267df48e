"""A small planted-signal catalog for the accuracy benchmark (in memory, seconds to write).

    python benchmarks/synthetic_small.py OUT_DIR [--items 12000] [--classes 18] [--dim 256] [--seed 7]

writes ``OUT_DIR/items.parquet`` (``id``, ``emb_a``, ``emb_b``, true ``label``) and
``OUT_DIR/classes.parquet`` (``name``, ``embedding``: one prompt shared by both views, as in the
Debian data). It is deliberately *not* Debian-shaped, so that choices made on Debian can be
checked on data they were not tuned on:

* classes come in confusable groups of three (siblings share a group direction);
* class sizes are long-tailed (Zipf, exponent 0.9, largest/smallest about 13×);
* the prompt is not where the data lies: each view's class centre is the prompt plus a shared
  "modality gap" plus a class-specific offset, so the zero-shot argmax is right about half the time;
* a class differs from its siblings strongly on a few dimensions of its own (what pair masks find);
* the two views see the same item through noise that is half shared (the item's own quirks) and
  half the view's own, so the views' errors are correlated, as with real text/image pairs.

A pure function of its arguments (``numpy.random.default_rng(seed)``): the same command writes the
same bytes. Used by ``benchmarks/accuracy.py``; independent of ``benchmarks/generate.py`` (the
scale generator).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _fsl(m: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(m, np.float32).ravel()), m.shape[1])


def make(n: int = 12000, k: int = 18, d: int = 256, seed: int = 7, *, group: int = 3,
         gap: float = 0.8, offset: float = 1.5, noise: float = 0.3, shared: float = 0.5,
         strong: int = 6, strong_scale: float = 0.3, strong_lo: float | None = None,
         prefix: str = "syn") -> tuple[pa.Table, pa.Table]:
    """The items and classes tables (see the module docstring for the planted structure).

    ``strong_lo``: views that are not alike (``benchmarks/experiments/hetero_views.py``): view a
    sees the class-specific dimensions at ``strong_scale`` for the even taxonomy groups and at
    ``strong_lo`` for the odd ones, view b the reverse. ``None``: both views alike."""
    rng = np.random.default_rng(seed)
    groups = np.arange(k) // group
    gdir = _unit(rng.normal(size=(groups.max() + 1, d)))
    prompts = _unit(gdir[groups] + 0.8 * _unit(rng.normal(size=(k, d))))
    sizes = 1.0 / np.arange(1, k + 1) ** 0.9
    y = rng.choice(k, size=n, p=rng.permutation(sizes / sizes.sum()))
    items: dict[str, pa.Array] = {"id": pa.array([f"{prefix}-{i:06d}" for i in range(n)])}
    common = rng.normal(size=(n, d))  # the item's own quirks, seen by both views
    for i, v in enumerate(("a", "b")):
        gap_v = _unit(rng.normal(size=d))
        centre = _unit(prompts + gap * gap_v + offset * _unit(rng.normal(size=(k, d))) / np.sqrt(2))
        own = np.stack([rng.choice(d, strong, replace=False) for _ in range(k)])  # (k, strong)
        signs = rng.choice([-1.0, 1.0], size=(k, strong))
        x = centre[y] + noise * (np.sqrt(shared) * common + np.sqrt(1 - shared) * rng.normal(size=(n, d)))
        scale = np.full(k, strong_scale) if strong_lo is None else np.where(groups % 2 == i, strong_scale, strong_lo)
        x[np.arange(n)[:, None], own[y]] += (scale[:, None] * signs)[y]
        items[f"emb_{v}"] = _fsl(_unit(x))
    names = [f"class{c:02d}" for c in range(k)]
    items["label"] = pa.array([names[c] for c in y])
    classes = pa.table({"name": pa.array(names), "embedding": _fsl(prompts)})
    return pa.table(items), classes


def write(out: str | Path, **kw) -> dict:
    """Write the catalog under ``out``; return the paths as job settings."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    items, classes = make(**kw)
    pq.write_table(items, out / "items.parquet", row_group_size=4000)
    pq.write_table(classes, out / "classes.parquet")
    return {"items": str(out / "items.parquet"), "classes": str(out / "classes.parquet")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--items", type=int, default=12000)
    ap.add_argument("--classes", type=int, default=18)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    print(write(a.out, n=a.items, k=a.classes, d=a.dim, seed=a.seed))


if __name__ == "__main__":
    main()
