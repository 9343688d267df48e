"""Base labels: cosine argmax of each item against the class prompts (METHOD.md §1)."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

#: Rows per matrix-product call. Every product is made on blocks of exactly this many rows (the
#: last one zero-padded), so a row's floating-point result never depends on how many rows share its
#: partition: that is what keeps labels identical for any partitioning.
CHUNK_ROWS = 2048


#: Columns of ``w`` are padded with zeros to a multiple of this: OpenBLAS's float32 kernels run a
#: ragged edge (13 prompts, 78 pairs) on slow paths; 2048 × 768 @ 768 × 13 took 1.19 ms, padded to
#: 16 columns 0.68 ms (the real columns' bits unchanged on this machine's OpenBLAS).
PAD_COLS = 16


def chunked_matmul(x: np.ndarray, w: np.ndarray, *, out_dtype: type = np.float32,
                   square: bool = False) -> np.ndarray:
    """``x @ w`` (``(x∘x) @ w`` with ``square``) computed on fixed-size, zero-padded row blocks
    (partition-invariant rounding). Squaring block by block never materialises ``x∘x``."""
    n, cols = x.shape[0], w.shape[1]
    out = np.empty((n, cols), dtype=out_dtype)
    if cols % PAD_COLS:
        wide = np.zeros((w.shape[0], cols + PAD_COLS - cols % PAD_COLS), dtype=w.dtype)
        wide[:, :cols] = w
        w = wide
    buf = np.zeros((CHUNK_ROWS, x.shape[1]), dtype=x.dtype) if (square or n % CHUNK_ROWS) else None
    for s in range(0, n, CHUNK_ROWS):
        blk = x[s:s + CHUNK_ROWS]
        r = blk.shape[0]
        if r < CHUNK_ROWS or square:
            if square:
                np.multiply(blk, blk, out=buf[:r])
            else:
                buf[:r] = blk
            buf[r:] = 0
            blk = buf
        out[s:s + r] = (blk @ w)[:r, :cols]
    return out


class BaseLabels(NamedTuple):
    """Per item: ``label`` (class index), ``top1`` cosine and ``margin`` (top-1 minus top-2)."""

    scores: np.ndarray  # (n, k) cosine
    label: np.ndarray   # (n,) int32
    top1: np.ndarray    # (n,) float32
    margin: np.ndarray  # (n,) float32


def base_labels(x: np.ndarray, classes: np.ndarray, scale: np.ndarray | None = None) -> BaseLabels:
    """Cosine scores ``S = X Cᵀ`` and their argmax (ties: lower class index).

    ``x`` holds normalised rows, or raw rows with ``scale`` their inverse norms (then
    ``S = (X Cᵀ) · scale``: the same cosines without a normalised copy of ``x``).
    """
    s = chunked_matmul(x, np.ascontiguousarray(classes.T))
    if scale is not None:
        s *= scale[:, None]
    k = s.shape[1]
    label = np.argmax(s, axis=1).astype(np.int32)
    rows = np.arange(len(s))
    top1 = s[rows, label]
    if k > 1:
        part = np.partition(s, k - 2, axis=1)
        margin = top1 - part[:, k - 2]
    else:
        margin = np.zeros_like(top1)
    return BaseLabels(s, label, top1, margin)
