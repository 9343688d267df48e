"""NumPy experiment: pair decisions by a per-pair diagonal discriminant from the moments, against
the job's cosine decisions (issue 4's accuracy goals). One process, the package's pure functions.

    PYTHONPATH=. python benchmarks/experiments/discriminant.py [--sets all,A,B,syn] [--grid NAME]

Reproduces the job's pipeline in memory (base labels -> class moments -> masks -> pair margins ->
round-robin per view and on the views' fused margins -> ``refine`` rounds re-estimating the
moments from the ``keep`` most confident fused labels) with ``decision = cosine`` (the job) or
``decision = disc`` (per pair: ``w = M⊙(μa−μb)/σ²``, bias ``−w·(μa+μb)/2`` (+ a log prior),
margin divided by the pair's discriminant scale ``Δ = sqrt(Σ_M (μa−μb)²/σ²)``), and scores
accuracy per view and final, agreement (weighted F1, view a against view b) and annotation QA
(10% flipped, seed 0; the job's review priority on the fused margins, precision@N).

Everything a streaming job could compute: per-class moments (n, Σx, Σx²) per dim, per-class label
counts, one ``X Wᵀ`` (+ bias, + the ``(x∘x) Maskᵀ`` norm product for cosine margins) per block.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent.parent))

import synthetic_small  # noqa: E402
from accuracy import FLIP_SEED, FLIP_SHARE, load_dataset  # noqa: E402
from pairwise_dask.arrays import hash_ids  # noqa: E402
from pairwise_dask.base import base_labels, chunked_matmul  # noqa: E402
from pairwise_dask.masks import all_pairs, fit_masks, pair_lookup, resolve_dims, top_dims  # noqa: E402
from pairwise_dask.metrics import accuracy, confusion, weighted_f1  # noqa: E402
from pairwise_dask.moments import QUANT_BITS, Moments, class_moments, cross_deviation_ratio, set_moments  # noqa: E402
from pairwise_dask.passes import MARGIN_BINS, margin_quantile, review_priority  # noqa: E402
from pairwise_dask.tourney import (class_scores, decide, fuse_margins, pair_decisions, pair_margins,  # noqa: E402
                                   pair_signs)  # noqa: E402

DATA = Path("/work/shared/data/debian")
MAN_DIR = ["/tmp/acc2-man"]


# --- data --------------------------------------------------------------------------------------

def datasets(which: list[str], work: Path) -> dict:
    out = {}
    if {"all", "A", "B"} & set(which):
        ds = load_dataset("debian", str(DATA / "items.parquet"), str(DATA / "classes.parquet"))
        half = (hash_ids(ds.ids) & np.uint64(1)).astype(bool)
        for tag, sel in (("all", np.ones(len(ds.y), bool)), ("A", ~half), ("B", half)):
            if tag in which:
                out[tag] = _subset(ds, sel)
    if "man" in which:  # benchmarks/experiments/make_manpages.py's catalog (this machine's man pages)
        man = Path(MAN_DIR[0])
        ds = load_dataset("man", str(man / "items.parquet"), str(man / "classes.parquet"))
        out["man"] = _subset(ds, np.ones(len(ds.y), bool))
    if "syn" in which:
        syn = synthetic_small.write(work / "synthetic")
        ds = load_dataset("syn", syn["items"], syn["classes"])
        out["syn"] = _subset(ds, np.ones(len(ds.y), bool))
    return out


def _subset(ds, sel: np.ndarray) -> dict:
    views = [v for v, _ in ds.views]
    ids = ds.ids.filter(sel) if not sel.all() else ds.ids
    return {"x": {v: np.ascontiguousarray(ds.x[v][sel]) for v in views},
            "c": {v: ds.c[v] for v in views}, "y": ds.y[sel], "k": len(ds.names),
            "hash": hash_ids(ids)}


# --- decisions ---------------------------------------------------------------------------------

def cosine_margins(x, c, mom, *, m, mix, min_items=2):
    masks = fit_masks(mom, c, m=m, min_items=min_items, per_pair=False, mix=mix)
    return pair_margins(x, masks, pair_decisions(x, masks)), masks.pairs


def _class_stats(mom: Moments, c: np.ndarray, min_items: int):
    """Per class: mean, variance, count and whether it had too few items. A class without enough
    items gets its prompt, scaled to a typical mean's norm, and the mean variance."""
    mu, var = mom.mean_var()
    n = mom.n.astype(np.float64)
    small = n < min_items
    if small.any():
        typ = np.nanmedian(np.linalg.norm(np.nan_to_num(mu[~small]), axis=1))
        mu = np.where(small[:, None], c * typ, mu)
        var = np.where(small[:, None], np.nanmean(var[~small], axis=0), var)
        n = np.where(small, min_items, n)
    return mu, var, n, small


def disc_margins(x, c, mom, *, m, prior=None, shrink=0.0, scale=True, min_items=2, mix=0.0,
                 mask_by="xv", ret_delta=False, shrink_ref=None, pool_all=0.0, var_mom=None, var_for="disc",
                 bias1d=""):
    """Per-pair diagonal discriminant on the pair's mask (``m = d``: every dimension).

    ``prior``: per-class log prior (added as ``log π_a − log π_b``, in the margin's units after the
    Δ scaling: the bias is added before dividing). ``shrink``: pooled variance + shrink × its
    mean over dimensions (regularises tiny variances). ``mix``: the class means pulled towards the
    prompts, ``μ + mix·(ĉ − μ̂-direction)`` is not well defined in std units, so ``mix`` here
    shifts the mean by ``mix · ‖μ‖ · ĉ`` before normalising -- 0: pure moments.
    """
    k, d = c.shape
    pairs = all_pairs(k)
    a, b = pairs[:, 0], pairs[:, 1]
    mu, var, n, small = _class_stats(mom, c, min_items)
    var_sel = var
    if var_mom is not None:  # session 7: variances (and their pooling counts) from another item set
        _, var2, n2, _ = _class_stats(var_mom, c, min_items)
        var, n = var2, n2
        if var_for == "both":
            var_sel = var2
    if mix > 0:
        mu = mu + mix * np.linalg.norm(mu, axis=1, keepdims=True) * c
        mu /= (1 + mix)
    pooled = (n[a, None] * var[a] + n[b, None] * var[b]) / (n[a] + n[b])[:, None]
    if pool_all > 0:  # session 4: mixed with the within-class variance pooled over ALL classes (one per dim)
        glob = (n[:, None] * var).sum(axis=0) / n.sum()
        pooled = (1.0 - pool_all) * pooled + pool_all * glob[None, :]
    if shrink_ref is not None:  # session 3: towards each dimension's total variance (all items)
        pooled = pooled + shrink * shrink_ref[None, :] + 1e-12
    else:
        pooled = pooled + shrink * pooled.mean(axis=1, keepdims=True) + 1e-12
    diff = mu[a] - mu[b]
    if m >= d:
        mask = np.ones((len(pairs), d), bool)
    else:
        if mask_by == "xv":
            score = cross_deviation_ratio(mu[a], var_sel[a], mu[b], var_sel[b])
        else:  # "fisher": (μa−μb)²/σ² — the discriminant's own per-dim contribution
            score = diff ** 2 / pooled
        dims = top_dims(np.nan_to_num(score, nan=0.0), m)
        mask = np.zeros((len(pairs), d), bool)
        mask[np.arange(len(pairs))[:, None], dims] = True
    w = np.where(mask, diff / pooled, 0.0)
    bias = -(w * (mu[a] + mu[b]) / 2).sum(axis=1)
    if bias1d == "equal_z":  # session 13: threshold at equal standardised distance along w (per-class spread)
        sa = np.sqrt(np.maximum((w * w * var[a]).sum(axis=1), 1e-12))
        sb = np.sqrt(np.maximum((w * w * var[b]).sum(axis=1), 1e-12))
        pa, pb = (w * mu[a]).sum(axis=1), (w * mu[b]).sum(axis=1)
        bias = -(pa * sb + pb * sa) / (sa + sb)
    if prior is not None:
        bias = bias + prior[a] - prior[b]
    delta = np.sqrt((w * diff).sum(axis=1)) if scale else np.ones(len(pairs))
    wt = (w / delta[:, None]).astype(np.float32)
    out = chunked_matmul(x, np.ascontiguousarray(wt.T)) + (bias / delta).astype(np.float32)
    return (out, pairs, delta) if ret_delta else (out, pairs)


def qda_margins(x, c, mom, *, m, prior=None, shrink=0.0, scale=True, min_items=2, pool=0.0, mask_by="xv",
                ret_delta=False, shrink_to="own"):
    """Session 3: per-pair diagonal QDA on the pair's mask: the Gaussian log-likelihood ratio with
    per-class variances ``σa², σb²`` (each ``(1−pool)·σc² + pool·pooled``, then + shrink × its mean
    over dims, like disc): ``Σ_M −(x−μa)²/2σa² + (x−μb)²/2σb² − ½log σa² + ½log σb²`` (+ log prior),
    i.e. ``(x∘x)·Q + x·W + b``: one more product per block. Divided by the pooled discriminant scale
    ``Δ`` (so ``pool = 1`` is exactly ``disc``)."""
    k, d = c.shape
    pairs = all_pairs(k)
    a, b = pairs[:, 0], pairs[:, 1]
    mu, var, n, small = _class_stats(mom, c, min_items)
    pooled = (n[a, None] * var[a] + n[b, None] * var[b]) / (n[a] + n[b])[:, None]
    va = (1 - pool) * var[a] + pool * pooled
    vb = (1 - pool) * var[b] + pool * pooled
    if shrink_to == "pooled":  # the same additive constant on both sides (the pooled mean variance)
        va = va + shrink * pooled.mean(axis=1, keepdims=True) + 1e-12
        vb = vb + shrink * pooled.mean(axis=1, keepdims=True) + 1e-12
    else:
        va = va + shrink * va.mean(axis=1, keepdims=True) + 1e-12
        vb = vb + shrink * vb.mean(axis=1, keepdims=True) + 1e-12
    pooled = pooled + shrink * pooled.mean(axis=1, keepdims=True) + 1e-12
    diff = mu[a] - mu[b]
    if m >= d:
        mask = np.ones((len(pairs), d), bool)
    else:
        score = cross_deviation_ratio(mu[a], var[a], mu[b], var[b]) if mask_by == "xv" else diff ** 2 / pooled
        dims = top_dims(np.nan_to_num(score, nan=0.0), m)
        mask = np.zeros((len(pairs), d), bool)
        mask[np.arange(len(pairs))[:, None], dims] = True
    q = np.where(mask, 0.5 / vb - 0.5 / va, 0.0)
    w = np.where(mask, mu[a] / va - mu[b] / vb, 0.0)
    bias = np.where(mask, -0.5 * mu[a] ** 2 / va + 0.5 * mu[b] ** 2 / vb - 0.5 * np.log(va) + 0.5 * np.log(vb),
                    0.0).sum(axis=1)
    if prior is not None:
        bias = bias + prior[a] - prior[b]
    wl = np.where(mask, diff / pooled, 0.0)
    delta = np.sqrt((wl * diff).sum(axis=1)) if scale else np.ones(len(pairs))
    out = (chunked_matmul(x, np.ascontiguousarray((w / delta[:, None]).astype(np.float32).T))
           + chunked_matmul(x * x, np.ascontiguousarray((q / delta[:, None]).astype(np.float32).T))
           + (bias / delta).astype(np.float32))
    return (out, pairs, delta) if ret_delta else (out, pairs)


def em_prior(llr, pairs, k, prior0, *, temp=1.0, iters=50):
    """Saerens-style EM prior from pair log-likelihood ratios (n, P) without any prior in them:
    class log-likelihoods up to a constant as the mean LLR against every class (exact when the
    LLRs are consistent), posteriors ∝ π exp(l / temp), π ← mean posterior, to a fixed point."""
    l = (llr @ pair_signs(pairs, k)) / k / temp
    l = l - l.max(axis=1, keepdims=True)
    el = np.exp(l)
    pi = np.exp(prior0 - prior0.max()) if prior0 is not None else np.ones(k)
    pi = pi / pi.sum()
    for _ in range(iters):
        post = el * pi
        post /= post.sum(axis=1, keepdims=True)
        new = post.mean(axis=0)
        if np.abs(new - pi).max() < 1e-7:
            pi = new
            break
        pi = new
    return np.log(pi + 1e-12)


def lda_margins(x, mom, gram, *, lam=0.1, scale=True, prior=None):
    """Full-covariance LDA: pooled within-class covariance from one (d, d) Gram of the kept items
    and the per-class sums (Σ_W = (G − Σ_c n_c μ_c μ_cᵀ)/n), shrunk towards its mean variance."""
    k, d = mom.s1.shape
    pairs = all_pairs(k)
    a, b = pairs[:, 0], pairs[:, 1]
    mu, _ = mom.mean_var()
    n = mom.n.astype(np.float64)
    mu = np.nan_to_num(mu)
    sw = (gram - (mu.T * n) @ mu) / n.sum()
    sw = (1 - lam) * sw + lam * np.trace(sw) / d * np.eye(d)
    v = np.linalg.solve(sw, mu.T).T                       # (k, d): Σ⁻¹ μ_c
    w = v[a] - v[b]
    bias = -0.5 * ((mu[a] * v[a]).sum(1) - (mu[b] * v[b]).sum(1))
    if prior is not None:
        bias = bias + prior[a] - prior[b]
    delta = np.sqrt(np.maximum((w * (mu[a] - mu[b])).sum(1), 1e-12)) if scale else np.ones(len(pairs))
    wt = (w / delta[:, None]).astype(np.float32)
    return chunked_matmul(x, np.ascontiguousarray(wt.T)) + (bias / delta).astype(np.float32), pairs


# --- the pipeline ------------------------------------------------------------------------------

def keep_mask(margin: np.ndarray, keep: float) -> np.ndarray:
    hist = np.histogram(np.clip(margin, 0.0, 2.0), bins=MARGIN_BINS)[0]
    if margin.max() > 2.0:  # discriminant margins are not cosines: an exact quantile instead
        return margin >= np.quantile(margin, 1.0 - keep)
    return margin >= margin_quantile(hist, 1.0 - keep)


SAT = [0.0]
SOFTMIN_TAU = [1.0]


def decide_any(margins, pairs, pidx, h, *, mode, seed, w=None):
    """The package's modes, plus "score": argmax of the mean signed margin (class_scores).
    ``w`` (session 4, mode "score" only): per-pair weights (P,) on the margins, normalised to mean 1."""
    if mode == "softmin":  # session 13: smooth maximin, -τ log Σ_b exp(-m_ab / τ) (τ → 0: maximin; τ → ∞: Borda)
        k = pidx.shape[0]
        n = margins.shape[0]
        full = np.zeros((n, k, k), np.float32)
        full[:, pairs[:, 0], pairs[:, 1]] = margins
        full[:, pairs[:, 1], pairs[:, 0]] = -margins
        tau = SOFTMIN_TAU[0]
        z = -full / tau
        z[:, np.arange(k), np.arange(k)] = -np.inf
        zm = z.max(axis=2, keepdims=True)
        sc = -tau * (np.log(np.exp(z - zm).sum(axis=2)) + zm[:, :, 0])
        lab = sc.argmax(1).astype(np.int32)
        part = np.partition(sc, k - 2, axis=1)
        return lab, (part[:, -1] - part[:, -2]).astype(np.float32)
    if mode != "score":
        return decide(margins, pairs, pidx, h, mode=mode, seed=seed)
    k = pidx.shape[0]
    if w is not None:
        margins = margins * (w / w.mean()).astype(np.float32)[None, :]
    if SAT[0]:  # session 7: saturated votes, tanh(m / τ) (τ → ∞: today's score; τ → 0: win counts)
        margins = np.tanh(margins / SAT[0]).astype(np.float32)
    sc = class_scores(margins, pairs, k)
    lab = sc.argmax(1).astype(np.int32)
    part = np.partition(sc, k - 2, axis=1)
    return lab, (part[:, -1] - part[:, -2]).astype(np.float32)


def min_pair_margin(fused: np.ndarray, pidx: np.ndarray, pairs: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Session 4: the label's smallest signed fused pair margin against any other class."""
    k = pidx.shape[0]
    p = pidx[label[:, None], np.arange(k)[None, :]]                     # (n, k), -1 on the label itself
    pc = np.maximum(p, 0)
    sign = np.where(pairs[pc, 0] == label[:, None], 1.0, -1.0).astype(np.float32)
    mm = np.take_along_axis(fused, pc, axis=1) * sign
    mm[p < 0] = np.inf
    return mm.min(axis=1)


def rank_share(x: np.ndarray) -> np.ndarray:
    """Session 15: each value's rank as a share of the items (0 lowest, 1 highest)."""
    r = np.empty(len(x), np.float64)
    r[np.argsort(x, kind="stable")] = np.arange(len(x))
    return r / max(len(x) - 1, 1)


def keep_per_class(margin: np.ndarray, label: np.ndarray, k: int, keep: float) -> np.ndarray:
    """Class-balanced selection: within each label, its ``keep`` most confident items."""
    out = np.zeros(len(margin), bool)
    for c in range(k):
        r = np.flatnonzero(label == c)
        if len(r):
            out[r] = margin[r] >= np.quantile(margin[r], 1.0 - keep)
    return out


def calibrate0(s: np.ndarray, how: str) -> np.ndarray:
    """Session 7: round 0's zero-shot cosines with each class's bias over the catalog removed.
    ``center``: minus the class's mean cosine over all items (a hub prompt, close to everything,
    no longer wins by default); ``z``: also divided by its standard deviation."""
    if not how:
        return s
    if how == "view":  # session 16: one scale per view (its cosines' spread over all items and classes)
        return (s - s.mean()) / s.std()
    if how == "rowz":  # session 16: each item's cosines standardised over the classes
        return (s - s.mean(axis=1, keepdims=True)) / s.std(axis=1, keepdims=True)
    out = s - s.mean(axis=0, keepdims=True)
    if how == "z":
        out = out / s.std(axis=0, keepdims=True)
    return out


def cca_maps(xa: np.ndarray, xb: np.ndarray, reg: float, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Session 13: canonical correlation maps of two views (label-free; three (d, d) Grams).
    Each view whitened by its ridge-regularised total covariance, then rotated onto the singular
    vectors of the whitened cross-covariance; the first ``r`` canonical axes kept."""
    def inv_sqrt(c):
        c = c + reg * np.trace(c) / len(c) * np.eye(len(c))
        ev, vec = np.linalg.eigh(c)
        return (vec / np.sqrt(ev)) @ vec.T
    xa = xa.astype(np.float64)
    xb = xb.astype(np.float64)
    ma, mb = xa.mean(0), xb.mean(0)
    n = len(xa)
    caa = xa.T @ xa / n - np.outer(ma, ma)
    cbb = xb.T @ xb / n - np.outer(mb, mb)
    cab = xa.T @ xb / n - np.outer(ma, mb)
    if reg < 0:  # "pls": orthogonal maps, the singular vectors of the raw cross-covariance (no whitening)
        u, sv, vt = np.linalg.svd(cab)
        return u[:, :r], vt.T[:, :r], sv[:r]
    wa, wb = inv_sqrt(caa), inv_sqrt(cbb)
    u, sv, vt = np.linalg.svd(wa @ cab @ wb)
    return (wa @ u)[:, :r], (wb @ vt.T)[:, :r], sv[:r]


def class_distance(x: np.ndarray, mom: Moments, c: np.ndarray, shrink: float) -> np.ndarray:
    """Session 13: (n, k) diagonal standardised squared distance of every item to every class
    mean (class's own variance + shrink × its mean): (x∘x)·(1/σ²) − 2x·(μ/σ²) + Σμ²/σ², per dim."""
    mu, var, _, _ = _class_stats(mom, c, 2)
    mu = np.nan_to_num(mu)
    var = np.nan_to_num(var) + shrink * np.nanmean(var, axis=1, keepdims=True) + 1e-12
    iv = 1.0 / var
    x64 = x.astype(np.float64)
    return ((x64 * x64) @ iv.T - 2 * x64 @ (mu * iv).T + (mu * mu * iv).sum(1)[None, :]) / x.shape[1]


def _top2_pair(fused: np.ndarray, pairs: np.ndarray, k: int) -> np.ndarray:
    """Session 13: per item, the index of the pair made of its two best classes (by class score)."""
    sc = class_scores(fused, pairs, k)
    top2 = np.argpartition(-sc, 1, axis=1)[:, :2]
    pid = np.full((k, k), -1)
    pid[pairs[:, 0], pairs[:, 1]] = np.arange(len(pairs))
    return pid[top2.min(1), top2.max(1)]


def low_density_shift(fused: np.ndarray, pairs: np.ndarray, k: int, deltas: dict, *, nmin: int = 40,
                      bw: float = 0.3, wmax: float = 1.0) -> np.ndarray:
    """Session 13: per pair (a, b), the position of the density minimum of the fused a-vs-b margin
    among the items whose two best classes are a and b (cluster assumption: the boundary belongs
    in a low-density gap). Margins are in within-class std units (class means near ±Δ/2); the
    search is in ±min(wmax, Δ/4); a minimum on the window's edge (no valley) gives no shift."""
    item_pair = _top2_pair(fused, pairs, k)
    dbar = sum(deltas.values()) / len(deltas) if deltas else np.full(len(pairs), 4.0)
    shift = np.zeros(len(pairs), np.float32)
    for p in range(len(pairs)):
        z = fused[item_pair == p, p].astype(np.float64)
        if len(z) < nmin or (z > 0).sum() < nmin // 4 or (z < 0).sum() < nmin // 4:
            continue
        w = min(wmax, dbar[p] / 4)
        grid = np.linspace(-w, w, 41)
        dens = np.exp(-0.5 * ((grid[:, None] - z[None, :]) / bw) ** 2).sum(1)
        j = int(np.argmin(dens))
        if 0 < j < len(grid) - 1:
            shift[p] = grid[j]
    return shift


def disc_margins_rivalx(x, c, cell: Moments, *, m, shrink=0.5, min_items=2, ret_delta=True):
    """Session 13: the per-pair diagonal discriminant with each side's moments leaving out the
    items whose runner-up is the pair's other class. ``cell``: moments of the k² (label, runner-up)
    sets; side a of (a, b) = Σ_r cell[a, r] − cell[a, b] (exact differences of sums)."""
    k, d = c.shape
    pairs = all_pairs(k)
    a, b = pairs[:, 0], pairs[:, 1]
    n3 = cell.n.reshape(k, k).astype(np.float64)
    s13 = cell.s1.reshape(k, k, -1)
    s23 = cell.s2.reshape(k, k, -1)
    tot = Moments(n3.sum(1), s13.sum(1), s23.sum(1))
    side = lambda u, v: Moments(tot.n[u] - n3[u, v], tot.s1[u] - s13[u, v], tot.s2[u] - s23[u, v])
    mua, vara, na, _ = _class_stats(side(a, b), c[a], min_items)
    mub, varb, nb, _ = _class_stats(side(b, a), c[b], min_items)
    pooled = (na[:, None] * vara + nb[:, None] * varb) / (na + nb)[:, None]
    pooled = pooled + shrink * pooled.mean(axis=1, keepdims=True) + 1e-12
    diff = mua - mub
    score = cross_deviation_ratio(mua, vara, mub, varb)
    dims = top_dims(np.nan_to_num(score, nan=0.0), m)
    mask = np.zeros((len(pairs), d), bool)
    mask[np.arange(len(pairs))[:, None], dims] = True
    w = np.where(mask, diff / pooled, 0.0)
    bias = -(w * (mua + mub) / 2).sum(axis=1)
    delta = np.sqrt((w * diff).sum(axis=1))
    wt = (w / delta[:, None]).astype(np.float32)
    out = chunked_matmul(x, np.ascontiguousarray(wt.T)) + (bias / delta).astype(np.float32)
    return out, pairs, delta


def pair_gmm_shift(fused: np.ndarray, pairs: np.ndarray, k: int, deltas: dict, *, nmin: int = 40,
                   iters: int = 100, tmax: float = 1.0, pi_only: bool = False) -> np.ndarray:
    """Session 13: per pair (a, b), a two-Gaussian mixture (shared variance) fitted by EM to the fused
    a-vs-b margins of the items whose two best classes are a and b (started at ±Δ/2, σ = 1: the
    margins are in within-class std units); the pair's threshold moved to the fitted mixture's
    Bayes point (local class proportions, no global counts). Degenerate fits give no shift."""
    item_pair = _top2_pair(fused, pairs, k)
    dbar = sum(deltas.values()) / len(deltas)
    shift = np.zeros(len(pairs), np.float32)
    for p in range(len(pairs)):
        z = fused[item_pair == p, p].astype(np.float64)
        if len(z) < nmin:
            continue
        m1, m2, s2, pi = dbar[p] / 2, -dbar[p] / 2, 1.0, 0.5
        for _ in range(iters):
            l1 = pi * np.exp(-0.5 * (z - m1) ** 2 / s2)
            l2 = (1 - pi) * np.exp(-0.5 * (z - m2) ** 2 / s2)
            g = l1 / (l1 + l2 + 1e-300)
            pi = g.mean()
            if pi < 0.02 or pi > 0.98:
                break
            if pi_only:  # components fixed at ±Δ/2, unit variance: only the local proportion is fitted
                continue
            m1 = (g * z).sum() / g.sum()
            m2 = ((1 - g) * z).sum() / (1 - g).sum()
            s2 = (g * (z - m1) ** 2 + (1 - g) * (z - m2) ** 2).sum() / len(z)
        if not (0.05 < pi < 0.95) or (m1 - m2) < 0.5 * np.sqrt(s2):
            continue
        t = (m1 + m2) / 2 + s2 * np.log((1 - pi) / pi) / (m1 - m2)
        shift[p] = np.clip(t, -tmax, tmax)
    return shift


def soft_moments(x: np.ndarray, p: np.ndarray) -> Moments:
    """Moments weighted by a (n, k) membership in [0, 1] (float counts; same units as Moments)."""
    q = float(2 ** QUANT_BITS)
    return Moments(p.sum(axis=0), (p.T @ x.astype(np.float64)) * q, (p.T @ (x.astype(np.float64) ** 2)) * q)


def run(ds: dict, *, decision="cosine", dims=None, mix=1.0, refine=2, keep=0.5, prior="none",
        shrink=0.0, scale=True, mode="round-robin", fit_on="view", first="cosine", mask_by="xv",
        temp_prior=1.0, anchor=0.0, soft=0.0, keep_by="all", truth_moments=False, lam=0.1, cotrain="", joint=False, pairkeep=0.0,
        pairkeep_and_keep=False, rot="", qda_pool=0.0, em_temp=1.0, ens="",
        qda_shrink="own", shrink_total=False, fuse="mean", mom_acc=False,
        score_w="", keep_on="score", pool_all=0.0, cal0="", sat=0.0, var_all="", xfit=0, xfit0=False, dmix=0.0,
        cca=0.0, cca_reg=0.1, typ=0.0, typ_fixed=True, lds=False, lds_bw=0.3, lds_nmin=40, bias1d="",
        stable="", rivalx=False, tau=1.0, keep0="") -> dict:
    SAT[0] = sat
    SOFTMIN_TAU[0] = tau
    xs, cs, k, h = ds["x"], ds["c"], ds["k"], ds["hash"]
    if rot:  # "total" or "within": first every view rotated onto the eigenvectors of its items' covariance
        xs, cs = dict(xs), dict(cs)
        for v in list(xs):
            _, vec = np.linalg.eigh(np.cov(xs[v].T.astype(np.float64)))
            xs[v] = np.ascontiguousarray((xs[v] @ vec).astype(np.float32))
            cs[v] = np.ascontiguousarray((cs[v] @ vec).astype(np.float32))
    views = list(xs)
    d = next(iter(xs.values())).shape[1]
    xs_round0, cs_round0 = xs, cs
    xs_disc, cs_disc = xs, cs
    if cca:  # session 13: the discriminant rounds (r >= 1) on the views' canonical axes (round 0 unchanged)
        rr = max(1, int(round(cca * d)))
        ta, tb, _ = cca_maps(xs[views[0]], xs[views[1]], cca_reg, rr)
        tm = {views[0]: ta, views[1]: tb}
        xs_disc = {v: np.ascontiguousarray((xs[v].astype(np.float64) @ tm[v]).astype(np.float32)) for v in views}
        cs_disc = {v: np.ascontiguousarray((cs[v].astype(np.float64) @ tm[v]).astype(np.float32)) for v in views}
    d_disc = next(iter(xs_disc.values())).shape[1]
    m = resolve_dims(dims, d)
    m_disc = resolve_dims(dims, d_disc)
    bases = {v: base_labels(xs[v], cs[v]) for v in views}
    tvar = {v: xs[v].astype(np.float64).var(axis=0) for v in views} if shrink_total else {v: None for v in views}
    # round 0 statistics: each view's base labels, all items (fit_on = view: the article)
    if fit_on == "view":
        moms = {v: class_moments(xs[v], bases[v].label, np.ones(len(h), bool), k) for v in views}
    else:  # fused base label, keep most confident
        s = sum(calibrate0(b.scores, cal0) for b in bases.values())
        lab = s.argmax(1).astype(np.int32)
        part = np.partition(s, k - 2, axis=1)
        marg = (part[:, -1] - part[:, -2]) / len(views)
        if keep0 == "top1":  # session 15: the winner's own fused cosine, not its lead over the runner-up
            marg = part[:, -1] / len(views)
        elif keep0 == "mix":  # session 15: both, as rank shares
            marg = rank_share(marg) + rank_share(part[:, -1])
        elif keep0 in ("top1c", "top1z"):  # session 16: the winner's own cosine against its class's catalog mean
            top = part[:, -1]
            marg = (top - s.mean(axis=0)[lab]) / len(views)
            if keep0 == "top1z":
                marg = marg / s.std(axis=0)[lab]
        kp = keep_mask(marg, keep[0] if isinstance(keep, list) else keep)
        moms = {v: class_moments(xs[v], lab, kp, k) for v in views}
        mlab, mkp = lab, kp  # session 11: the labels and keep mask behind `moms` (for cross-fitting)
    fold = ((h >> np.uint64(8)) % np.uint64(max(xfit, 1))).astype(np.int64)
    logprior = None
    if prior in ("base", "base_kept"):  # session 3: fixed at round 0 (no feedback); damped by temp_prior
        if fit_on == "view":
            raise ValueError("prior base needs fit_on = fused")
        cnt = (np.bincount(lab, minlength=k) if prior == "base" else moms[views[0]].n) + 1.0
        logprior = temp_prior * np.log(cnt / cnt.sum())
    ens_acc = None
    vmoms: dict = {}
    if var_all and fit_on != "view":  # round 0: every item of its fused base label
        vmoms = {v: class_moments(xs[v], lab, np.ones(len(lab), bool), k) for v in views}
    per_pair_sets = False
    grams = {v: xs[v].astype(np.float64).T @ xs[v] for v in views}  # round 0 (cosine) does not use them
    res = {}
    m0 = m
    prev_final = sum(b.scores for b in bases.values()).argmax(1).astype(np.int32)  # session 13: label history
    for r in range(refine + 1):
        dec = decision if (r > 0 or first == "same") else first
        if cca:  # session 13: round 0 on the (PCA) axes, the refine rounds on the canonical axes
            xs, cs, m = (xs_disc, cs_disc, m_disc) if r > 0 else (xs_round0, cs_round0, m0)
        margins, pairs, deltas = {}, None, {}
        for v in views:
            if dec == "cosine" and xfit and xfit0:
                out = np.empty((len(h), k * (k - 1) // 2), np.float32)
                for f in range(xfit):
                    sel = fold == f
                    mf = class_moments(xs[v], mlab, mkp & ~sel, k)
                    out[sel], pairs = cosine_margins(xs[v][sel], cs[v], mf, m=m, mix=mix)
                margins[v] = out
            elif dec == "cosine":
                margins[v], pairs = cosine_margins(xs[v], cs[v], moms[v], m=m, mix=mix)
            elif dec == "lda":
                margins[v], pairs = lda_margins(xs[v], moms[v], grams[v], lam=lam, scale=scale, prior=logprior)
            elif per_pair_sets:
                mk = fit_masks(moms[v], cs[v], m=m, min_items=2, per_pair=True, decision="discriminant",
                               prior=1.0 if prior != "none" else 0.0)
                margins[v], pairs = pair_decisions(xs[v], mk), mk.pairs
            elif dec == "qda":
                margins[v], pairs, deltas[v] = qda_margins(xs[v], cs[v], moms[v], m=m, shrink=shrink, scale=scale,
                                                           prior=None if prior == "em" else logprior,
                                                           pool=qda_pool, mask_by=mask_by, ret_delta=True,
                                                           shrink_to=qda_shrink)
            elif rivalx and dec == "disc":  # session 13
                margins[v], pairs, deltas[v] = disc_margins_rivalx(xs[v], cs[v], cmoms[v], m=m, shrink=shrink)
            elif xfit and dec == "disc":  # session 11: cross-fitting, each fold decided by the other folds' moments
                out = np.empty((len(h), k * (k - 1) // 2), np.float32)
                dl = []
                for f in range(xfit):
                    sel = fold == f
                    mf = class_moments(xs[v], mlab, mkp & ~sel, k)
                    out[sel], pairs, dlf = disc_margins(xs[v][sel], cs[v], mf, m=m, shrink=shrink, scale=scale,
                                                        prior=None if prior == "em" else logprior, mix=0.0,
                                                        mask_by=mask_by, ret_delta=True, shrink_ref=tvar[v],
                                                        pool_all=pool_all)
                    dl.append(dlf)
                margins[v], deltas[v] = out, np.mean(dl, axis=0)
            else:
                margins[v], pairs, deltas[v] = disc_margins(xs[v], cs[v], moms[v], m=m, shrink=shrink, scale=scale,
                                                            prior=None if prior == "em" else logprior, mix=dmix,
                                                            mask_by=mask_by, ret_delta=True, shrink_ref=tvar[v],
                                                            pool_all=pool_all,
                                                            var_mom=vmoms.get(v) if var_all else None,
                                                            var_for=var_all or "disc", bias1d=bias1d)
        if prior == "em" and dec in ("disc", "qda"):  # Saerens EM on this round's likelihoods, then adjust
            llr = sum(margins[v].astype(np.float64) * deltas[v] for v in views)
            lp = temp_prior * em_prior(llr, pairs, k, None, temp=em_temp)
            for v in views:
                margins[v] = margins[v] + ((lp[pairs[:, 0]] - lp[pairs[:, 1]]) / deltas[v]).astype(np.float32)
        if ens and dec != "cosine":  # session 3: sum of the margins of rounds 1..r
            if ens_acc is None:
                ens_acc = {v: np.zeros_like(margins[v]) for v in views}
            for v in views:
                ens_acc[v] += margins[v]
            ens_m = {v: ens_acc[v].copy() for v in views}
            if ens == "sum":
                margins = ens_m
        if lds and dec != "cosine":  # session 13: each pair's boundary moved to the density gap of its fused margin
            fz = fuse_margins([margins[v] for v in views])
            sh = (pair_gmm_shift(fz, pairs, k, deltas, nmin=lds_nmin, pi_only=lds == "gmm_pi") if lds in ("gmm", "gmm_pi")
                  else low_density_shift(fz, pairs, k, deltas, nmin=lds_nmin, bw=lds_bw))
            for v in views:
                margins[v] = margins[v] - sh[None, :]
        pidx = pair_lookup(pairs, k)
        # session 4: per-pair weights of mode "score" (Δ: summed raw log-likelihood ratios)
        wfun = {"": None, "delta": lambda z: z, "sqrt_delta": np.sqrt,
                "inv_sqrt_delta": lambda z: 1.0 / np.sqrt(z + 1e-12)}[score_w]
        vw = {v: (wfun(deltas[v]) if (wfun and v in deltas and not ens) else None) for v in views}
        labels, vmargin = {}, {}
        for v in views:
            labels[v], vmargin[v] = decide_any(margins[v], pairs, pidx, h, mode=mode, seed=0, w=vw[v])
        fused = fuse_margins([margins[v] for v in views])
        if fuse == "llr" and deltas and not ens:  # session 3: the views' LLRs summed, over the joint scale
            dsum = np.sqrt(sum(deltas[v] ** 2 for v in views))
            fused = (sum(margins[v] * deltas[v] for v in views) / dsum).astype(np.float32)
        if joint and dec == "disc":  # one discriminant on the views side by side (2m of 2d dims)
            xj = np.concatenate([xs[v] for v in views], axis=1)
            cj = np.concatenate([cs[v] for v in views], axis=1) / np.sqrt(len(views))
            mj = Moments(moms[views[0]].n, np.concatenate([moms[v].s1 for v in views], axis=1),
                         np.concatenate([moms[v].s2 for v in views], axis=1))
            fused, _ = disc_margins(xj, cj, mj, m=min(m * len(views), xj.shape[1]), shrink=shrink, scale=scale,
                                    prior=logprior, mask_by=mask_by)
        if anchor > 0 and dec != "cosine":  # the zero-shot cosine difference as one more piece of evidence
            zs = sum(bases[v].scores for v in views) / len(views)
            fused = fused + anchor * (zs[:, pairs[:, 0]] - zs[:, pairs[:, 1]])
            for v in views:
                margins[v] = margins[v] + anchor * (bases[v].scores[:, pairs[:, 0]] - bases[v].scores[:, pairs[:, 1]])
            for v in views:
                labels[v], _ = decide_any(margins[v], pairs, pidx, h, mode=mode, seed=0, w=vw[v])
        fw = None
        if wfun and deltas and not ens:  # the fused margins: the llr fusion's joint Δ, else the views' mean Δ
            fdelta = (np.sqrt(sum(deltas[v] ** 2 for v in views)) if (fuse == "llr" and not joint)
                      else sum(deltas[v] for v in views) / len(views))
            fw = wfun(fdelta)
        final, fmargin = decide_any(fused, pairs, pidx, h, mode=mode, seed=0, w=fw)
        res = {"labels": labels, "final": final, "fused": fused, "pairs": pairs, "margin": fmargin}
        if ens == "sum_out" and ens_acc is not None:  # the ensemble only for the output
            lab_e = {v: decide_any(ens_m[v], pairs, pidx, h, mode=mode, seed=0)[0] for v in views}
            fz = fuse_margins([ens_m[v] for v in views])
            fe, fme = decide_any(fz, pairs, pidx, h, mode=mode, seed=0)
            res = {"labels": lab_e, "final": fe, "fused": fz, "pairs": pairs, "margin": fme}
        if r == refine:
            break
        if soft > 0:  # posterior-weighted moments: softmax of the class scores at temperature `soft`
            sc = class_scores(fused, pairs, k) * (k - 1) / 2
            p = np.exp((sc - sc.max(axis=1, keepdims=True)) / soft)
            p /= p.sum(axis=1, keepdims=True)
            moms = {v: soft_moments(xs[v], p) for v in views}
        else:
            kr = keep[min(r, len(keep) - 1)] if isinstance(keep, list) else keep  # a curriculum: one keep per round
            if keep_on == "minpair":  # session 4: confidence = the label's smallest fused pair margin
                fmargin = min_pair_margin(fused, pidx, pairs, final)
            elif keep_on in ("win", "winmix"):  # session 15: the winner's own class score (absolute)
                win = class_scores(fused, pairs, k)[np.arange(len(final)), final]
                fmargin = win if keep_on == "win" else rank_share(fmargin) + rank_share(win)
            if keep_by in ("agree", "agree_q"):  # session 3: only items whose every view agrees with final
                agr = np.all([labels[v] == final for v in views], axis=0)
                if keep_by == "agree":
                    kp = keep_mask(fmargin, kr) & agr
                else:
                    kp = np.zeros(len(final), bool)
                    kp[agr] = fmargin[agr] >= np.quantile(fmargin[agr], 1.0 - kr)
            else:
                kp = keep_mask(fmargin, kr) if keep_by == "all" else keep_per_class(fmargin, final, k, kr)
            if stable:  # session 13: only items whose fused label is the previous round's (round 0: zero-shot)
                st = final == prev_final
                n_keep = int(round(kr * len(final)))
                if stable == "prev_fixed" and st.sum() > n_keep:  # the top `kr` share of all items, among the stable
                    thr = np.sort(fmargin[st])[::-1][n_keep - 1]
                    kp = st & (fmargin >= thr)
                else:
                    kp = kp & st
            prev_final = final
            if typ > 0:  # session 13: drop each class's least typical kept items (distance to its class mean)
                if typ_fixed:  # the margin keep enlarged so that the kept share stays `kr`
                    kp = keep_mask(fmargin, min(1.0, kr / (1.0 - typ)))
                dist = sum(np.take_along_axis(class_distance(xs[v], moms[v], cs[v], shrink), final[:, None].astype(np.int64),
                                              axis=1)[:, 0] for v in views)
                for c_ in range(k):
                    rows_ = np.flatnonzero(kp & (final == c_))
                    if len(rows_) >= 5:
                        kp[rows_[dist[rows_] > np.quantile(dist[rows_], 1.0 - typ)]] = False
            if truth_moments:
                final = ds["y"]
            if rot == "within":  # rotate onto the eigenvectors of the kept items' pooled within-class covariance
                xs, cs = dict(xs), dict(cs)
                for v in views:
                    xk = xs[v][kp].astype(np.float64)
                    mu_c = np.zeros((k, xk.shape[1]))
                    cnt = np.bincount(final[kp], minlength=k)
                    np.add.at(mu_c, final[kp], xk)
                    gram = xk.T @ xk - (mu_c.T / np.maximum(cnt, 1)) @ mu_c
                    _, vec = np.linalg.eigh(gram)
                    xs[v] = np.ascontiguousarray((xs[v] @ vec).astype(np.float32))
                    cs[v] = np.ascontiguousarray((cs[v] @ vec).astype(np.float32))
            new = {v: class_moments((xs_disc if cca else xs)[v], final, kp, k) for v in views}
            if rivalx:  # session 13: moments of the (label, runner-up) cells of the kept items
                sc_ = class_scores(fused, pairs, k)
                sc_[np.arange(len(final)), final] = -np.inf
                ru = sc_.argmax(1)
                cmoms = {v: class_moments((xs_disc if cca else xs)[v], (final * k + ru).astype(np.int32), kp, k * k)
                         for v in views}
            mlab, mkp = final, kp
            if var_all:  # session 7: every item of each final label, for the variances
                vmoms = {v: class_moments(xs[v], final, np.ones(len(final), bool), k) for v in views}
            # session 3: the moments of every round so far merged (exact sums; rot "within" excluded)
            moms = {v: moms[v] + new[v] for v in views} if (mom_acc and rot != "within") else new
            if pairkeep > 0:  # per-pair sets: side a of (a, b) = final a, kept, and a-vs-b fused margin ≥ pairkeep
                member = np.zeros((len(final), k * k))
                kk = kp if pairkeep_and_keep else np.ones(len(final), bool)
                for p_, (pa_, pb_) in enumerate(pairs):
                    member[(final == pa_) & kk & (fused[:, p_] >= pairkeep), pa_ * k + pb_] = 1.0
                    member[(final == pb_) & kk & (-fused[:, p_] >= pairkeep), pb_ * k + pa_] = 1.0
                moms = {v: set_moments(xs[v], member) for v in views}
                per_pair_sets = True
            if cotrain:  # each view's moments from the OTHER view's labels, kept by that view's margin
                other = {v: views[(i + 1) % len(views)] for i, v in enumerate(views)}
                moms = {}
                for v in views:
                    o = other[v]
                    lab_o = labels[o] if cotrain == "label" else final
                    kp_o = keep_mask(vmargin[o], kr)
                    if cotrain == "agree":
                        kp_o = kp & (labels[o] == final)
                    moms[v] = class_moments(xs[v], lab_o, kp_o, k)
            grams = {v: xs[v][kp].astype(np.float64).T @ xs[v][kp] for v in views}
        if prior in ("labels", "kept"):  # "labels": counts of every item's final label; "kept": the moments' n
            cnt = (np.bincount(final, minlength=k) if prior == "labels" else moms[views[0]].n) + 1.0
            logprior = temp_prior * np.log(cnt / cnt.sum())
    return res


def score(ds: dict, res: dict) -> dict:
    y, k = ds["y"], ds["k"]
    views = list(res["labels"])
    out = {f"acc {v}": accuracy(confusion(y, res["labels"][v], k)) for v in views}
    out["final"] = accuracy(confusion(y, res["final"], k))
    out["agree"] = weighted_f1(confusion(res["labels"][views[-1]], res["labels"][views[0]], k))
    out["P@N"] = qa(ds, res)
    return out


def qa(ds: dict, res: dict) -> float:
    """The job's review list with 10% of the annotations flipped (benchmarks/accuracy.py's corrupt)."""
    y, k = ds["y"], ds["k"]
    n = len(y)
    rng = np.random.default_rng(FLIP_SEED)
    flip = rng.random(n) < FLIP_SHARE
    ann = y.copy()
    ann[flip] = (y[flip] + rng.integers(1, k, n)[flip]) % k
    views = list(res["labels"])
    stack = np.stack([res["labels"][v] for v in views])
    final = res["final"]
    agree = (stack == stack[0]).all(axis=0)
    differs = ann != final
    flagged = differs | ~agree
    dissent = np.where(stack[0] != final, stack[0], stack[-1])
    proposed = np.where(~differs, dissent, final)
    rows = np.flatnonzero(flagged)
    pr = review_priority(res["fused"][rows], res["pairs"], k, proposed[rows], ann[rows])
    order = rows[np.argsort(-pr, kind="stable")]
    nf = int(flip.sum())
    return float(flip[order[:nf]].mean())


# --- grids -------------------------------------------------------------------------------------

GRIDS = {
    "main": [
        ("job defaults (cosine, m=100, mix=1, refine=2, keep=.5)", {}),
        ("cosine dims=0.5", {"dims": 0.5}),
        ("disc m=100, refine=2, keep=.5", {"decision": "disc"}),
        ("disc m=100, refine=2, keep=.5, first=disc", {"decision": "disc", "first": "same"}),
        ("disc m=d, refine=2", {"decision": "disc", "dims": 0.9999}),
        ("disc m=100 refine=4", {"decision": "disc", "refine": 4}),
        ("disc m=100 prior", {"decision": "disc", "prior": "labels"}),
        ("disc m=100 noscale", {"decision": "disc", "scale": False}),
    ],
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", default="A")
    ap.add_argument("--grid", default="main")
    ap.add_argument("--work", default="/tmp/acc2-exp")
    ap.add_argument("--opts", default="", help="JSON list of [name, options] rows instead of --grid")
    ap.add_argument("--man", default=MAN_DIR[0], help="folder of make_manpages.py's catalog (set: man)")
    a = ap.parse_args()
    MAN_DIR[0] = a.man
    data = datasets(a.sets.split(","), Path(a.work))
    import json
    grid = json.loads(a.opts) if a.opts else GRIDS[a.grid]
    print("| variant | set | acc a | acc b | final | agree | P@N | s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, opts in grid:
        for tag, ds in data.items():
            t = time.perf_counter()
            sc = score(ds, run(ds, **opts))
            vals = " | ".join(f"{sc[c]:.3f}" for c in ("acc a", "acc b", "final", "agree", "P@N"))
            print(f"| {name} | {tag} | {vals} | {time.perf_counter() - t:.1f} |", flush=True)


if __name__ == "__main__":
    main()
