"""Write a synthetic catalog straight to Parquet, one row group at a time (never all in memory).

    python benchmarks/generate.py OUT_DIR --items 1000000 --dim 768 --views image,text --classes 13

writes ``OUT_DIR/items.parquet`` (``id`` int64, one ``fixed_size_list<float32|float16>[d]`` column
per view, ``label`` string) and ``OUT_DIR/classes.parquet`` (``name`` and one prompt column per view,
named like the items' columns).

The planted signal: classes come in taxonomy groups (``--group-size`` classes share a group centre,
as sibling product types do); each class has a prompt ``c`` per view and, per view, a data centre
``μ = c + gap`` (the "modality gap": the data cloud is not where the prompt points). An item of class
``y`` is ``normalise(a·μ_y + noise)``, the noise being isotropic plus a few strong class-specific
dimensions. The base cosine argmax is then right only part of the time, and pair masks (which find
the dimensions where two classes' data differ) have something to find. ``label`` is the true class
with ``--flip`` of the rows relabelled at random (annotation errors to find).

Everything is a pure function of ``--seed`` (each row group has its own generator seeded by
``(seed, group)``), so the same command writes the same bytes.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def make_classes(k: int, d: int, views: list[str], *, seed: int, group_size: int) -> dict:
    """Per view: prompts ``(k, d)`` and data centres ``(k, d)``; and each class's taxonomy group."""
    rng = np.random.default_rng([seed, 0x5EED])
    groups = np.arange(k) // max(1, group_size)
    n_groups = int(groups.max()) + 1
    out: dict = {"group": groups, "views": {}}
    for v in views:
        g_centre = _unit(rng.standard_normal((n_groups, d)))
        prompt = _unit(g_centre[groups] + 0.6 * _unit(rng.standard_normal((k, d))))
        # only a sixth of the dimensions carry the class in the data; elsewhere the data ignore
        # the prompt (a full-vector cosine drowns in those): what the pair masks should find
        signal = np.full(d, 0.15)
        signal[rng.choice(d, size=max(1, d // 6), replace=False)] = 1.0
        gap = 0.3 * _unit(rng.standard_normal((1, d)))
        centre = prompt * signal + gap
        out["views"][v] = {"prompt": prompt.astype(np.float32), "centre": centre.astype(np.float32)}
    return out


def _fsl(m: np.ndarray, t: pa.DataType) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(m.reshape(-1), type=t), m.shape[1])


def make_group(g: int, rows: int, start: int, cls: dict, views: list[str], columns: list[str], *,
               seed: int, dtype: str, noise: float, flip: float, names: pa.Array) -> pa.Table:
    """Row group ``g`` (rows ``start … start+rows-1``) as an Arrow table."""
    rng = np.random.default_rng([seed, g])
    k = len(cls["group"])
    y = rng.integers(0, k, size=rows)
    cols: dict[str, pa.Array] = {"id": pa.array(np.arange(start, start + rows, dtype=np.int64))}
    t = pa.float16() if dtype == "float16" else pa.float32()
    for v, col in zip(views, columns):
        d = cls["views"][v]["centre"].shape[1]
        x = rng.standard_normal((rows, d), dtype=np.float32)
        x *= np.float32(noise / np.sqrt(d))
        x += cls["views"][v]["centre"][y]
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        cols[col] = _fsl(x.astype(np.float16) if dtype == "float16" else x, t)
    ann = y.copy()
    flipped = rng.random(rows) < flip
    ann[flipped] = rng.integers(0, k, size=int(flipped.sum()))
    cols["label"] = names.take(pa.array(ann.astype(np.int32)))
    return pa.table(cols)


def generate(out: str | Path, *, items: int, dim: int, views: list[str], columns: list[str] | None = None,
             classes: int = 13, group_size: int = 0, seed: int = 0, row_group: int = 65536,
             dtype: str = "float32", compression: str = "none", noise: float = 1.5,
             flip: float = 0.05, files: int = 1) -> dict:
    """Write the catalog; return its description (also written to ``OUT/catalog.json``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    columns = columns or views
    group_size = group_size or classes
    cls = make_classes(classes, dim, views, seed=seed, group_size=group_size)
    names = pa.array([f"class_{i:04d}" for i in range(classes)], pa.string())
    ctab = {"name": names}
    for v, col in zip(views, columns):
        ctab[col] = _fsl(cls["views"][v]["prompt"], pa.float32())
    pq.write_table(pa.table(ctab), out / "classes.parquet")

    t = pa.float16() if dtype == "float16" else pa.float32()
    schema = pa.schema([("id", pa.int64())] + [(c, pa.list_(t, dim)) for c in columns] + [("label", pa.string())])
    comp = None if compression == "none" else compression
    t0 = time.perf_counter()
    n_groups = -(-items // row_group)
    per_file = -(-n_groups // files)
    paths = []
    if files == 1:
        targets = [out / "items.parquet"]
    else:
        (out / "items").mkdir(exist_ok=True)
        targets = [out / "items" / f"part.{i:04d}.parquet" for i in range(files)]
    g = 0
    for path in targets:
        # no dictionary for high-entropy float columns: it only costs time
        with pq.ParquetWriter(path, schema, compression=comp, use_dictionary=["label"],
                              write_statistics=["id"]) as w:
            for _ in range(per_file):
                if g >= n_groups:
                    break
                start = g * row_group
                rows = min(row_group, items - start)
                w.write_table(make_group(g, rows, start, cls, views, columns, seed=seed, dtype=dtype,
                                         noise=noise, flip=flip, names=names), row_group_size=rows)
                g += 1
        paths.append(str(path))
    desc = {"items": items, "dim": dim, "views": dict(zip(views, columns)), "classes": classes,
            "group_size": group_size, "seed": seed, "row_group": row_group, "dtype": dtype,
            "compression": compression, "noise": noise, "flip": flip, "files": paths,
            "bytes": sum(Path(p).stat().st_size for p in paths), "seconds": round(time.perf_counter() - t0, 2)}
    (out / "catalog.json").write_text(json.dumps(desc, indent=2) + "\n")
    return desc


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out")
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--views", default="image,text", help="view names = column names, comma separated")
    p.add_argument("--classes", type=int, default=13)
    p.add_argument("--group-size", type=int, default=0, help="classes per taxonomy group (0: one group)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--row-group", type=int, default=65536, help="rows per Parquet row group")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    p.add_argument("--compression", default="none", help="none, snappy, zstd, lz4")
    p.add_argument("--noise", type=float, default=1.5)
    p.add_argument("--flip", type=float, default=0.05, help="fraction of annotations relabelled at random")
    p.add_argument("--files", type=int, default=1, help="split the row groups over this many files")
    a = p.parse_args(argv)
    views = [v.strip() for v in a.views.split(",") if v.strip()]
    desc = generate(a.out, items=a.items, dim=a.dim, views=views, classes=a.classes, group_size=a.group_size,
                    seed=a.seed, row_group=a.row_group, dtype=a.dtype, compression=a.compression,
                    noise=a.noise, flip=a.flip, files=a.files)
    print(json.dumps(desc, indent=2))


if __name__ == "__main__":
    main()
