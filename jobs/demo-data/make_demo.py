"""Build the demo catalog shipped in this folder from the Debian data set of ../shared/data/debian/.

A class-balanced subset: up to PER_CLASS items of each of the 21 classes, drawn with a fixed seed,
embeddings stored as float16 (half the bytes; the job reads float16 and computes in float32).

    python jobs/demo-data/make_demo.py ../shared/data/debian jobs/demo-data
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

PER_CLASS = 150
SEED = 0


def f16(col: pa.ChunkedArray) -> pa.Array:
    arr = col.combine_chunks()
    d = arr.type.list_size
    vals = np.asarray(arr.flatten()).astype(np.float16)
    return pa.FixedSizeListArray.from_arrays(pa.array(vals, pa.float16()), d)


def main(src: str, dst: str) -> None:
    items = pq.read_table(Path(src) / "items.parquet", columns=["id", "label", "text_a", "emb_a", "emb_b"])
    labels = np.asarray(items.column("label").to_pylist(), dtype=object)
    rng = np.random.default_rng(SEED)
    keep = []
    for name in sorted(set(labels)):
        idx = np.flatnonzero(labels == name)
        keep.extend(rng.permutation(idx)[:PER_CLASS])
    keep = np.sort(np.asarray(keep))
    sub = items.take(pa.array(keep))
    out = pa.table({"id": sub.column("id").cast(pa.string()), "label": sub.column("label"),
                    "synopsis": sub.column("text_a"), "emb_a": f16(sub.column("emb_a")),
                    "emb_b": f16(sub.column("emb_b"))})
    Path(dst).mkdir(parents=True, exist_ok=True)
    pq.write_table(out, Path(dst) / "items.parquet", compression="zstd", row_group_size=1000)
    classes = pq.read_table(Path(src) / "classes.parquet")
    pq.write_table(classes, Path(dst) / "classes.parquet", compression="zstd")
    print(f"{out.num_rows} items, {classes.num_rows} classes -> {dst}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
