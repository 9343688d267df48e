"""The planted-signal catalog most job tests use (fixtures.py has the bad-input toolkit)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fixtures import fsl

REPO = Path(__file__).resolve().parents[1]
DEMO_JOB = REPO / "jobs" / "demo.toml"


def make_catalog(folder: Path, *, n: int = 600, d: int = 16, k: int = 4, views: tuple[str, ...] = ("a", "b"),
                 seed: int = 0, row_group: int = 100, noise: float = 1.2, label: bool = True,
                 d_by_view: dict[str, int] | None = None) -> dict:
    """A planted-signal catalog: items.parquet and classes.parquet under ``folder``.

    Each class has a direction; items are their class direction plus noise on all dimensions, so
    the base argmax is mediocre and the masks have something to find. ``d_by_view``: views of
    their own dimension (as 512-d image and 384-d text vectors), else every view has ``d``.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    y = rng.integers(0, k, n)
    cols: dict[str, pa.Array] = {"id": pa.array([f"item-{i:06d}" for i in range(n)])}
    cls: dict[str, pa.Array] = {"name": pa.array([f"class{c}" for c in range(k)])}
    for j, v in enumerate(views):
        d = (d_by_view or {}).get(v, d)
        centers = rng.normal(size=(k, d))
        informative = rng.random(d) < 0.3
        x = rng.normal(scale=noise, size=(n, d))
        x[:, informative] += centers[y][:, informative] * 2
        x[:, ~informative] += rng.normal(size=(n, (~informative).sum())) * 1.5
        cols[f"emb_{v}"] = fsl(x.astype(np.float32))
        cls[f"emb_{v}"] = fsl(centers.astype(np.float32))
    if label:
        cols["label"] = pa.array([f"class{c}" for c in y])
    pq.write_table(pa.table(cols), folder / "items.parquet", row_group_size=row_group)
    pq.write_table(pa.table(cls), folder / "classes.parquet")
    return {"items": str(folder / "items.parquet"), "classes": str(folder / "classes.parquet"),
            "views": tuple((v, f"emb_{v}") for v in views), "label": "label" if label else ""}
