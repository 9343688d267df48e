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
from pairwise_dask.tourney import class_scores, decide, fuse_margins, pair_decisions, pair_margins  # noqa: E402

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


def disc_margins(x, c, mom, *, m, prior=None, shrink=0.0, scale=True, min_items=2, mix=0.0,
                 mask_by="xv"):
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
    mu, var = mom.mean_var()
    n = mom.n.astype(np.float64)
    small = n < min_items
    if small.any():  # a class without items: its prompt, scaled to a typical mean's norm, and the mean variance
        typ = np.nanmedian(np.linalg.norm(np.nan_to_num(mu[~small]), axis=1))
        mu = np.where(small[:, None], c * typ, mu)
        var = np.where(small[:, None], np.nanmean(var[~small], axis=0), var)
        n = np.where(small, min_items, n)
    if mix > 0:
        mu = mu + mix * np.linalg.norm(mu, axis=1, keepdims=True) * c
        mu /= (1 + mix)
    pooled = (n[a, None] * var[a] + n[b, None] * var[b]) / (n[a] + n[b])[:, None]
    pooled = pooled + shrink * pooled.mean(axis=1, keepdims=True) + 1e-12
    diff = mu[a] - mu[b]
    if m >= d:
        mask = np.ones((len(pairs), d), bool)
    else:
        if mask_by == "xv":
            score = cross_deviation_ratio(mu[a], var[a], mu[b], var[b])
        else:  # "fisher": (μa−μb)²/σ² — the discriminant's own per-dim contribution
            score = diff ** 2 / pooled
        dims = top_dims(np.nan_to_num(score, nan=0.0), m)
        mask = np.zeros((len(pairs), d), bool)
        mask[np.arange(len(pairs))[:, None], dims] = True
    w = np.where(mask, diff / pooled, 0.0)
    bias = -(w * (mu[a] + mu[b]) / 2).sum(axis=1)
    if prior is not None:
        bias = bias + prior[a] - prior[b]
    delta = np.sqrt((w * diff).sum(axis=1)) if scale else np.ones(len(pairs))
    wt = (w / delta[:, None]).astype(np.float32)
    out = chunked_matmul(x, np.ascontiguousarray(wt.T)) + (bias / delta).astype(np.float32)
    return out, pairs


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


def decide_any(margins, pairs, pidx, h, *, mode, seed):
    """The package's modes, plus "score": argmax of the mean signed margin (class_scores)."""
    if mode != "score":
        return decide(margins, pairs, pidx, h, mode=mode, seed=seed)
    k = pidx.shape[0]
    sc = class_scores(margins, pairs, k)
    lab = sc.argmax(1).astype(np.int32)
    part = np.partition(sc, k - 2, axis=1)
    return lab, (part[:, -1] - part[:, -2]).astype(np.float32)


def keep_per_class(margin: np.ndarray, label: np.ndarray, k: int, keep: float) -> np.ndarray:
    """Class-balanced selection: within each label, its ``keep`` most confident items."""
    out = np.zeros(len(margin), bool)
    for c in range(k):
        r = np.flatnonzero(label == c)
        if len(r):
            out[r] = margin[r] >= np.quantile(margin[r], 1.0 - keep)
    return out


def soft_moments(x: np.ndarray, p: np.ndarray) -> Moments:
    """Moments weighted by a (n, k) membership in [0, 1] (float counts; same units as Moments)."""
    q = float(2 ** QUANT_BITS)
    return Moments(p.sum(axis=0), (p.T @ x.astype(np.float64)) * q, (p.T @ (x.astype(np.float64) ** 2)) * q)


def run(ds: dict, *, decision="cosine", dims=None, mix=1.0, refine=2, keep=0.5, prior="none",
        shrink=0.0, scale=True, mode="round-robin", fit_on="view", first="cosine", mask_by="xv",
        temp_prior=1.0, anchor=0.0, soft=0.0, keep_by="all", truth_moments=False, lam=0.1, cotrain="", joint=False, pairkeep=0.0,
        pairkeep_and_keep=False, rot="") -> dict:
    xs, cs, k, h = ds["x"], ds["c"], ds["k"], ds["hash"]
    if rot:  # "total" or "within": first every view rotated onto the eigenvectors of its items' covariance
        xs, cs = dict(xs), dict(cs)
        for v in list(xs):
            _, vec = np.linalg.eigh(np.cov(xs[v].T.astype(np.float64)))
            xs[v] = np.ascontiguousarray((xs[v] @ vec).astype(np.float32))
            cs[v] = np.ascontiguousarray((cs[v] @ vec).astype(np.float32))
    views = list(xs)
    d = next(iter(xs.values())).shape[1]
    m = resolve_dims(dims, d)
    bases = {v: base_labels(xs[v], cs[v]) for v in views}
    # round 0 statistics: each view's base labels, all items (fit_on = view: the article)
    if fit_on == "view":
        moms = {v: class_moments(xs[v], bases[v].label, np.ones(len(h), bool), k) for v in views}
    else:  # fused base label, keep most confident
        s = sum(b.scores for b in bases.values())
        lab = s.argmax(1).astype(np.int32)
        part = np.partition(s, k - 2, axis=1)
        marg = (part[:, -1] - part[:, -2]) / len(views)
        kp = keep_mask(marg, keep[0] if isinstance(keep, list) else keep)
        moms = {v: class_moments(xs[v], lab, kp, k) for v in views}
    logprior = None
    per_pair_sets = False
    grams = {v: xs[v].astype(np.float64).T @ xs[v] for v in views}  # round 0 (cosine) does not use them
    res = {}
    for r in range(refine + 1):
        dec = decision if (r > 0 or first == "same") else first
        margins, pairs = {}, None
        for v in views:
            if dec == "cosine":
                margins[v], pairs = cosine_margins(xs[v], cs[v], moms[v], m=m, mix=mix)
            elif dec == "lda":
                margins[v], pairs = lda_margins(xs[v], moms[v], grams[v], lam=lam, scale=scale, prior=logprior)
            elif per_pair_sets:
                mk = fit_masks(moms[v], cs[v], m=m, min_items=2, per_pair=True, decision="discriminant",
                               prior=1.0 if prior != "none" else 0.0)
                margins[v], pairs = pair_decisions(xs[v], mk), mk.pairs
            else:
                margins[v], pairs = disc_margins(xs[v], cs[v], moms[v], m=m, shrink=shrink, scale=scale,
                                                 prior=logprior, mix=0.0, mask_by=mask_by)
        pidx = pair_lookup(pairs, k)
        labels, vmargin = {}, {}
        for v in views:
            labels[v], vmargin[v] = decide_any(margins[v], pairs, pidx, h, mode=mode, seed=0)
        fused = fuse_margins([margins[v] for v in views])
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
                labels[v], _ = decide_any(margins[v], pairs, pidx, h, mode=mode, seed=0)
        final, fmargin = decide_any(fused, pairs, pidx, h, mode=mode, seed=0)
        res = {"labels": labels, "final": final, "fused": fused, "pairs": pairs, "margin": fmargin}
        if r == refine:
            break
        if soft > 0:  # posterior-weighted moments: softmax of the class scores at temperature `soft`
            sc = class_scores(fused, pairs, k) * (k - 1) / 2
            p = np.exp((sc - sc.max(axis=1, keepdims=True)) / soft)
            p /= p.sum(axis=1, keepdims=True)
            moms = {v: soft_moments(xs[v], p) for v in views}
        else:
            kr = keep[min(r, len(keep) - 1)] if isinstance(keep, list) else keep  # a curriculum: one keep per round
            kp = keep_mask(fmargin, kr) if keep_by == "all" else keep_per_class(fmargin, final, k, kr)
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
            moms = {v: class_moments(xs[v], final, kp, k) for v in views}
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
        if prior != "none":  # "labels": counts of every item's final label; "kept": the moments' n
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
