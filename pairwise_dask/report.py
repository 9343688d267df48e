"""``OUT/report.html``: one self-contained page that says what a run did, for people.

The page needs no network: its figures are hand-written inline SVG, its style one ``<style>``
block, and every piece of text taken from the data goes through :func:`html.escape`.

Memory stays bounded whatever the catalog's size: ``labels/`` is streamed in record batches of
the few columns the figures need, labels become class indices with one vectorised
``index_in`` per batch, and the heat maps, per-class bars and margin histograms are built from
``k × k`` confusion counts and fixed-bin counts accumulated with :func:`numpy.bincount`. The
disagreement list keeps only its running top ``top`` rows.

Example
-------
>>> from pairwise_dask.report import write_report          # doctest: +SKIP
>>> write_report(Path("out"), json.loads(Path("out/summary.json").read_text()))  # doctest: +SKIP
PosixPath('out/report.html')
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .passes import review_order
from .storage import Location
from .metrics import weighted_f1
from .words import count

__all__ = ["ReportData", "collect", "render", "write_report"]

BATCH_ROWS = 1 << 16    # rows per streamed batch: bounds memory, whatever the catalog's size
MAP_CLASSES = 40        # heat maps and bars show at most this many classes (the most frequent)
MARGIN_BINS = 40        # margin histogram bins on [0, MARGIN_MAX]; larger margins go in the last
MARGIN_MAX = 1.0
DISC_MARGIN_MAX = 8.0   # decision = discriminant: margins in within-class standard deviations
NAME_CHARS = 30         # class names longer than this are cut in figures (full name in the tooltip)
CHAR_W = 6.6            # rough width of one character of 11 px text, to size the label margins

# Colours: a sequential blue ramp for shares, grey for "base", blue for "tourney", orange for
# disagreement. Chosen to stay distinguishable for the common colour-vision deficiencies.
BASE_COLOUR = "#9aa5b1"
TOURNEY_COLOUR = "#2563eb"
DISAGREE_COLOUR = "#f59e0b"
_RAMP = ((0.0, (247, 251, 255)), (0.25, (198, 219, 239)), (0.5, (107, 174, 214)),
         (0.75, (33, 113, 181)), (1.0, (8, 48, 107)))


@dataclass
class Comparison:
    """Labels compared across one pair of sources (two views, or the annotation and one view)."""

    row_title: str                 # e.g. "view a"
    col_title: str                 # e.g. "view b"
    columns: dict[str, tuple[str, str]]  # kind ("base"/"tourney") -> (row column, column column)
    conf: dict[str, np.ndarray] = field(default_factory=dict)  # kind -> (k, k) int64 counts
    dropped: int = 0               # rows whose label is null or not a class (e.g. annotation)
    truth_is_row: bool = False     # which side weighted F1 weighs by (the job's convention)

    def f1(self, kind: str) -> float:
        """Weighted F1 of one kind's counts, weighed as the job weighs it, so it equals the summary's
        (``a~b`` weighs by view b's classes; accuracy-like comparisons by the annotation's)."""
        c = self.conf[kind]
        return weighted_f1(c if self.truth_is_row else c.T)


@dataclass
class ReportData:
    """What the figures need, computed from ``labels/`` and ``disagreements/`` in bounded memory."""

    names: tuple[str, ...]
    views: list[str]
    rows: int
    comparison: Comparison | None
    margins: dict[str, np.ndarray]  # view -> (2, MARGIN_BINS) counts: [views agree, views disagree]
    top: pa.Table                   # the first rows of the review list
    fallback: pa.Table | None       # the pairs that fell back (from model/masks.parquet), if present
    margin_max: float = MARGIN_MAX  # the histograms' range [0, margin_max]
    margin_unit: str = "cosine margin"


# --- reading ---------------------------------------------------------------------------------

def _parquet_files(folder: Location) -> list[Location]:
    return folder.files() if folder.exists() else []


def _open(f: Location) -> pq.ParquetFile:
    return pq.ParquetFile(f.path if f.local else f.open("rb"))


def _batches(folder: Location, columns: Sequence[str] | None) -> Iterator[pa.RecordBatch]:
    """Record batches of ``columns`` (those present; ``None``: all) of every part under ``folder``."""
    for f in _parquet_files(folder):
        pf = _open(f)
        cols = None if columns is None else [c for c in columns if c in pf.schema_arrow.names]
        yield from pf.iter_batches(batch_size=BATCH_ROWS, columns=cols)


def _codes(arr: pa.Array, names: pa.Array) -> np.ndarray:
    """Class index of every label (int64), -1 where null or not a class name."""
    pos = pc.index_in(arr.cast(pa.string()), value_set=names)
    return pos.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


def _comparison(views: list[str], annotated: bool) -> Comparison | None:
    """Two views when there are two: their agreement is what the method improves. Otherwise the
    annotation against the only view, when there is one."""
    if len(views) >= 2:
        a, b = views[0], views[1]
        return Comparison(f"view {a}", f"view {b}",
                          {"base": (f"base_{a}", f"base_{b}"), "tourney": (f"label_{a}", f"label_{b}")})
    if annotated and views:
        v = views[0]
        return Comparison("annotation", f"view {v}",
                          {"base": ("annotation", f"base_{v}"), "tourney": ("annotation", f"label_{v}")},
                          truth_is_row=True)
    return None


def collect(out_dir: "Path | Location", summary: dict, *, top: int = 50) -> ReportData:
    """Stream ``labels/`` and ``disagreements/`` under ``out_dir`` into :class:`ReportData`."""
    out_dir = Location.of(out_dir)
    names = tuple(summary["classes"]["names"])
    k = len(names)
    views = list(summary["views"])
    names_arr = pa.array(names, pa.string())
    labels_dir = out_dir / "labels"
    schema_names: set[str] = set()
    files = _parquet_files(labels_dir)
    if files:
        schema_names = set(_open(files[0]).schema_arrow.names)
    comp = _comparison(views, "annotation" in schema_names)

    need = {"agree"} | {f"margin_{v}" for v in views}
    if comp:
        need |= {c for pair in comp.columns.values() for c in pair}
        comp.conf = {kind: np.zeros((k, k), np.int64) for kind in comp.columns}
    # a discriminant's margins are in within-class standard deviations, a cosine's in cosine units
    disc = summary.get("method", {}).get("decision") == "discriminant"
    margin_max, unit = (DISC_MARGIN_MAX, "margin (standard deviations)") if disc else (MARGIN_MAX, "cosine margin")
    margins = {v: np.zeros((2, MARGIN_BINS), np.int64) for v in views}
    rows = 0
    for batch in _batches(labels_dir, sorted(need)):
        n = batch.num_rows
        rows += n
        cols = dict(zip(batch.schema.names, batch.columns))
        if comp:
            for kind, (rc, cc) in comp.columns.items():
                r, c = _codes(cols[rc], names_arr), _codes(cols[cc], names_arr)
                ok = (r >= 0) & (c >= 0)
                if kind == "base":
                    comp.dropped += int(n - ok.sum())
                comp.conf[kind] += np.bincount(r[ok] * k + c[ok], minlength=k * k).reshape(k, k)
        agree = (cols["agree"].fill_null(True).to_numpy(zero_copy_only=False).astype(bool)
                 if "agree" in cols else np.ones(n, bool))
        for v in views:
            if f"margin_{v}" not in cols:
                continue
            m = cols[f"margin_{v}"].to_numpy(zero_copy_only=False).astype(np.float64)
            ok = np.isfinite(m)
            b = np.clip((m[ok] / margin_max * MARGIN_BINS).astype(np.int64), 0, MARGIN_BINS - 1)
            margins[v] += np.bincount((~agree[ok]).astype(np.int64) * MARGIN_BINS + b,
                                      minlength=2 * MARGIN_BINS).reshape(2, MARGIN_BINS)

    fallback = None
    masks = out_dir / "model" / "masks.parquet"
    if masks.exists():
        t = _open(masks).read(columns=["view", "class_a", "class_b", "n_a", "n_b", "fallback"])
        fallback = t.filter(pc.field("fallback"))
    return ReportData(names, views, rows, comp, margins, _top_rows(out_dir / "disagreements", top), fallback,
                      margin_max, unit)


def _top_rows(folder: Location, top: int) -> pa.Table:
    """The ``top`` rows of highest priority, keeping a running top while streaming (bounded memory).

    The job writes one globally sorted file, so this is its head; it stays right if the list is
    ever written as several parts."""
    best: pa.Table | None = None
    if top <= 0 or not folder.exists():
        return pa.table({})
    for batch in _batches(folder, None):  # all columns: the list holds no embeddings
        t = pa.Table.from_batches([batch])
        best = t if best is None else pa.concat_tables([best, t.cast(best.schema)])
        if "priority" in best.column_names:
            best = best.take(review_order(best))  # the job's own order (ties by id)
        best = best.slice(0, top)
        if "priority" not in best.column_names and best.num_rows >= top:
            break
    return best if best is not None else pa.table({})


# --- small formatting helpers ----------------------------------------------------------------

def _workers(cluster: dict) -> str:
    """"2 workers", or "2 workers (1 at the end)" when some were lost or joined during the run."""
    start, end = cluster.get("workers", ""), cluster.get("workers_at_end")
    return f"{_e(start)} workers" + (f" ({_e(end)} at the end)" if end is not None and end != start else "")


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _short(name: str, n: int = NAME_CHARS) -> str:
    return name if len(name) <= n else name[: n - 1] + "…"


def _items(n: int) -> str:
    """"1 item", "2,178 items"."""
    return f"{n:,} item" + ("" if n == 1 else "s")


def _f(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}f}"


def _colour(t: float) -> str:
    """The blue ramp at ``t`` in [0, 1]."""
    t = min(max(t, 0.0), 1.0)
    for (t0, c0), (t1, c1) in zip(_RAMP, _RAMP[1:]):
        if t <= t1:
            u = (t - t0) / (t1 - t0)
            return "#%02x%02x%02x" % tuple(round(a + (b - a) * u) for a, b in zip(c0, c1))
    return "#%02x%02x%02x" % _RAMP[-1][1]


def _shown_classes(conf: dict[str, np.ndarray], k: int) -> np.ndarray:
    """Indices of the classes to draw: all when few, else the most frequent (in file order)."""
    if k <= MAP_CLASSES:
        return np.arange(k)
    support = sum(c.sum(axis=0) + c.sum(axis=1) for c in conf.values())
    keep = np.argsort(-support, kind="stable")[:MAP_CLASSES]
    return np.sort(keep)


def per_class_f1(conf: np.ndarray) -> np.ndarray:
    """Per-class F1 between the two label sources (symmetric in rows and columns)."""
    tp = np.diag(conf).astype(np.float64)
    denom = conf.sum(axis=0) + conf.sum(axis=1)
    return np.divide(2 * tp, denom, out=np.full(len(tp), np.nan), where=denom > 0)


# --- figures (inline SVG) --------------------------------------------------------------------

def _heatmap(conf: np.ndarray, names: tuple[str, ...], shown: np.ndarray, title: str,
             row_title: str, col_title: str, *, row_labels: bool = True) -> str:
    """Row-normalised heat map: cell (r, c) is the share of the row source's class r that the
    column source put in class c, so a strong diagonal means agreement."""
    n = len(shown)
    cell = int(min(24, max(8, 420 // max(n, 1))))
    longest = max((len(_short(names[c])) for c in shown), default=0)
    label_w = int(longest * CHAR_W) + 14 if row_labels else 12
    top_h = int(longest * CHAR_W) + 30  # column labels stand upright, so two maps fit side by side
    right = 12
    # wide enough for the title and the axis note even with few classes
    w, h = label_w + max(n * cell + right, int(max(len(title), 40) * 8.2)), top_h + n * cell + 40
    sub = conf[np.ix_(shown, shown)]
    row_tot = conf[shown].sum(axis=1)  # shares of the whole row, hidden classes included
    share = np.divide(sub, row_tot[:, None], out=np.zeros(sub.shape), where=row_tot[:, None] > 0)
    font = min(11, cell - 1)  # dense maps: smaller labels rather than overlapping ones
    out = [f'<svg class="fig" role="img" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
           f'><title>{_e(title)}</title><style>.hmf{font} .tick {{ font-size: {font}px }}</style>'
           f'<g class="hmf{font}">']
    x0, y0 = label_w, top_h
    for j, c in enumerate(shown):
        x = x0 + j * cell + cell / 2
        out.append(f'<text class="tick" transform="translate({x + 4:.1f},{y0 - 6}) rotate(-90)">'
                   f'<title>{_e(names[c])}</title>{_e(_short(names[c]))}</text>')
    for i, r in enumerate(shown):
        y = y0 + i * cell
        if row_labels:
            out.append(f'<text class="tick" x="{x0 - 6}" y="{y + cell / 2 + 4:.1f}" text-anchor="end">'
                       f'<title>{_e(names[r])}</title>{_e(_short(names[r]))}</text>')
        for j, c in enumerate(shown):
            s = float(share[i, j])
            out.append(f'<rect x="{x0 + j * cell}" y="{y}" width="{cell}" height="{cell}" '
                       f'fill="{_colour(math.sqrt(s))}"{" class=diag" if i == j else ""}><title>'
                       f'{_e(row_title)} {_e(names[r])} → {_e(col_title)} {_e(names[c])}: '
                       f'{_items(int(sub[i, j]))} ({s:.0%} of the row)</title></rect>')
    out.append(f'<rect x="{x0}" y="{y0}" width="{n * cell}" height="{n * cell}" fill="none" stroke="#cbd5e1"/>')
    out.append(f'<text class="axis" x="{x0}" y="{y0 + n * cell + 22}">'
               f'rows: {_e(row_title)} · columns: {_e(col_title)}</text>')
    out.append(f'</g><text class="figtitle" x="{x0}" y="16">{_e(title)}</text></svg>')
    return "".join(out)


def _ramp_legend() -> str:
    """The heat maps' colour key. Colour follows the square root of the share so that the
    off-diagonal confusions of a few percent stay visible next to a strong diagonal."""
    stops = "".join(f'<stop offset="{t:.2f}" stop-color="{_colour(t)}"/>' for t in np.linspace(0, 1, 9))
    ticks = "".join(f'<line x1="{10 + math.sqrt(v) * 240:.1f}" y1="16" x2="{10 + math.sqrt(v) * 240:.1f}" y2="20" '
                    f'stroke="#64748b"/><text class="tick" x="{10 + math.sqrt(v) * 240:.1f}" y="32" '
                    f'text-anchor="middle">{v:.0%}</text>' for v in (0, 0.05, 0.25, 0.5, 1.0))
    return ('<svg class="fig legend" width="400" height="38" viewBox="0 0 400 38">'
            f'<defs><linearGradient id="ramp">{stops}</linearGradient></defs>'
            f'<rect x="10" y="4" width="240" height="12" fill="url(#ramp)" stroke="#cbd5e1"/>{ticks}'
            '<text class="tick" x="262" y="14">share of the row</text></svg>')


def _class_bars(base: np.ndarray, tourney: np.ndarray, support: np.ndarray, names: tuple[str, ...],
                shown: np.ndarray) -> str:
    """Per-class agreement, base (grey) and tourney (blue), the classes the tourney helped most first."""
    gain = np.nan_to_num(tourney[shown] - base[shown], nan=-np.inf)
    order = shown[np.argsort(-gain, kind="stable")]
    label_w, bar_w, row_h = 200, 560, 26
    w, h = label_w + bar_w + 190, 34 + row_h * len(order) + 26
    out = [f'<svg class="fig" role="img" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
           f'><title>Per-class agreement, base and tourney</title>']
    for t in (0, 0.25, 0.5, 0.75, 1.0):
        x = label_w + t * bar_w
        out.append(f'<line x1="{x:.1f}" y1="24" x2="{x:.1f}" y2="{h - 22}" stroke="#e2e8f0"/>'
                   f'<text class="tick" x="{x:.1f}" y="{h - 8}" text-anchor="middle">{t:g}</text>')
    out.append(f'<rect x="{label_w}" y="4" width="12" height="10" fill="{BASE_COLOUR}"/>'
               f'<text class="tick" x="{label_w + 16}" y="13">base</text>'
               f'<rect x="{label_w + 60}" y="4" width="12" height="10" fill="{TOURNEY_COLOUR}"/>'
               f'<text class="tick" x="{label_w + 76}" y="13">tourney</text>'
               f'<text class="tick" x="{label_w + bar_w + 10}" y="13">F1 base → tourney (items)</text>')
    for i, c in enumerate(order):
        y = 30 + i * row_h
        b, t = float(base[c]), float(tourney[c])
        out.append(f'<g><title>{_e(names[c])}: base {_f(b)} → tourney {_f(t)} ({_items(int(support[c]))})</title>'
                   f'<text class="tick" x="{label_w - 8}" y="{y + 14}" text-anchor="end">{_e(_short(names[c]))}</text>'
                   f'<rect x="{label_w}" y="{y + 2}" width="{np.nan_to_num(b) * bar_w:.1f}" height="9" fill="{BASE_COLOUR}"/>'
                   f'<rect x="{label_w}" y="{y + 12}" width="{np.nan_to_num(t) * bar_w:.1f}" height="9" fill="{TOURNEY_COLOUR}"/>')
        d = t - b
        cls = "up" if d > 0.005 else "down" if d < -0.005 else "flat"
        out.append(f'<text class="tick {cls}" x="{label_w + bar_w + 10}" y="{y + 14}">{_f(b, 2)} → {_f(t, 2)} '
                   f'({"+" if d >= 0 else "−"}{abs(d):.2f}) · {int(support[c]):,}</text></g>')
    out.append("</svg>")
    return "".join(out)


def _histogram(counts: np.ndarray, view: str, margin_max: float = MARGIN_MAX, unit: str = "cosine margin") -> str:
    """Stacked histogram of one view's tourney margins: views agree (blue) / disagree (orange)."""
    w, h, left, bottom, top = 420, 230, 50, 40, 26
    pw, ph = w - left - 14, h - bottom - top
    tot = counts.sum(axis=0)
    ymax = max(int(tot.max()), 1)
    base = 10 ** max(math.floor(math.log10(ymax)) - 1, 0)
    step = next(base * m for m in (1, 2, 5, 10, 20, 50, 100) if ymax / (base * m) <= 6)
    bw = pw / MARGIN_BINS
    out = [f'<svg class="fig" role="img" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
           f'><title>Margins of view {_e(view)}</title>'
           f'<text class="figtitle" x="{left}" y="16">view {_e(view)}</text>']
    for yv in range(0, ymax + 1, step):
        y = top + ph - yv / ymax * ph
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" stroke="#e2e8f0"/>'
                   f'<text class="tick" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{yv:,}</text>')
    for i in range(MARGIN_BINS):
        lo, hi = i * margin_max / MARGIN_BINS, (i + 1) * margin_max / MARGIN_BINS
        y = top + ph
        rng = f"{lo:.3f}–{hi:.3f}" if i < MARGIN_BINS - 1 else f"≥ {lo:.3f}"
        for part, colour, what in ((0, TOURNEY_COLOUR, "views agree"), (1, DISAGREE_COLOUR, "views disagree")):
            c = int(counts[part, i])
            if not c:
                continue
            bh = c / ymax * ph
            y -= bh
            out.append(f'<rect x="{left + i * bw + 0.5:.1f}" y="{y:.1f}" width="{bw - 1:.1f}" height="{bh:.1f}" '
                       f'fill="{colour}"><title>margin {rng}, {what}: {_items(c)}</title></rect>')
    for t in (0, 0.25, 0.5, 0.75, 1.0):
        x = left + t * pw
        lab = f"≥{t * margin_max:g}" if t == 1.0 else f"{t * margin_max:g}"
        out.append(f'<text class="tick" x="{x:.1f}" y="{top + ph + 16}" text-anchor="middle">{lab}</text>')
    out.append(f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="#64748b"/>'
               f'<text class="axis" x="{left + pw / 2:.1f}" y="{h - 6}" text-anchor="middle">'
               f'{unit}</text></svg>')
    return "".join(out)


# --- the page --------------------------------------------------------------------------------

_CSS = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: #0f172a; background: #f8fafc; margin: 0; }
main { max-width: 1240px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 32px 0 6px; border-bottom: 1px solid #e2e8f0; padding-bottom: 4px; }
p.note, .sub { color: #475569; margin: 4px 0 10px; max-width: 920px; }
code { font: 12px/1.3 ui-monospace, "DejaVu Sans Mono", monospace; background: #eef2f7; padding: 1px 4px;
       border-radius: 3px; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(180px, 1fr)); gap: 10px; margin-top: 16px; }
.card { background: #fff; border: 1px solid #e2e8f0; border-radius: 8px; padding: 10px 12px; }
.card .k { color: #64748b; font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.card .v { font-size: 21px; font-weight: 600; margin-top: 2px; white-space: nowrap; }
.card .d { color: #475569; font-size: 12px; }
.up { fill: #15803d; color: #15803d; } .down { fill: #b91c1c; color: #b91c1c; } .flat { fill: #475569; }
.row { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
.panel { background: #fff; border: 1px solid #e2e8f0; border-radius: 8px; padding: 8px; }
svg.fig { display: block; }
svg text { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
svg .tick { font-size: 11px; fill: #334155; }
svg .axis { font-size: 12px; fill: #475569; }
svg .figtitle { font-size: 13px; font-weight: 600; fill: #0f172a; }
svg rect.diag { stroke: #0f172a; stroke-opacity: .25; }
table { border-collapse: collapse; background: #fff; font-size: 12.5px; width: 100%; }
th, td { border-bottom: 1px solid #e2e8f0; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f1f5f9; font-weight: 600; position: sticky; top: 0; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.id { font-family: ui-monospace, "DejaVu Sans Mono", monospace; }
.tag { display: inline-block; padding: 0 6px; border-radius: 9px; font-size: 11.5px; background: #e2e8f0; }
.tag.annotation { background: #fee2e2; } .tag.views { background: #fef3c7; }
.tag.annotationviews { background: #fecaca; }
.changed { color: #1d4ed8; font-weight: 600; }
.muted { color: #94a3b8; }
footer { margin-top: 36px; color: #64748b; font-size: 12px; }
"""


def _over_annotated(s: dict) -> str:
    """"; over the 2,178 of 3,107 items with an annotation" when some items have none."""
    n, rows = s.get("final", {}).get("annotated_items"), s.get("labelled_items")
    over = "" if n is None or rows is None or n == rows else f"; over the {n:,} of {rows:,} items with an annotation"
    if s.get("method", {}).get("fit_on") == "annotation":  # a QA run: not a held-out figure
        over += "; in-sample: the statistics were fitted on the annotation"
    return over


def _card(key: str, label: str, value: str, detail: str = "", raw: Any = None) -> str:
    data = f' data-value="{_e(raw)}"' if raw is not None else ""
    return (f'<div class="card" data-metric="{_e(key)}"{data}><div class="k">{_e(label)}</div>'
            f'<div class="v">{value}</div><div class="d">{detail}</div></div>')


def _arrow(a: float | None, b: float | None) -> str:
    if a is None or b is None:
        return "–"
    d = b - a
    cls = "up" if d > 0.0005 else "down" if d < -0.0005 else "flat"
    return f'{_f(a)} → <span class="{cls}">{_f(b)}</span>'


def _headline(s: dict) -> str:
    items = int(s["items"]["rows"])
    names = s["classes"]["names"]
    views = s["views"]
    files, parts = s["items"].get("files", "?"), s["items"].get("partitions", "?")
    cards = [_card("items", "items", f"{items:,}", f"{count(files, 'file')}, {count(parts, 'partition')}", items),
             _card("classes", "classes", f"{len(names):,}", "", len(names)),
             _card("views", "views", f"{len(views)}", _e(", ".join(f"{v} = {c}" for v, c in views.items())),
                   len(views))]
    for pair, a in s.get("agreement_weighted_f1", {}).items():
        cards.append(_card(f"agreement:{pair}", f"agreement {pair}", _arrow(a.get("base"), a.get("tourney")),
                           "weighted F1 between the views, base → tourney", f"{a.get('base')}|{a.get('tourney')}"))
    for v, pv in s["per_view"].items():
        if "accuracy_base" in pv:
            cards.append(_card(f"accuracy:{v}", f"accuracy view {v}",
                               _arrow(pv["accuracy_base"], pv["accuracy_tourney"]),
                               f"against the annotation; macro F1 {_f(pv.get('macro_f1_base'))} → "
                               f"{_f(pv.get('macro_f1_tourney'))}{_over_annotated(s)}", f"{pv['accuracy_base']}|{pv['accuracy_tourney']}"))
    if "final" in s:
        cards.append(_card("accuracy:final", "accuracy final label", _f(s["final"]["accuracy"]),
                           f"macro F1 {_f(s['final'].get('macro_f1'))}{_over_annotated(s)}", s["final"]["accuracy"]))
    if "labelled_items" in s:  # fit and update write a model, no labels: nothing changed, no review list
        for v, pv in s["per_view"].items():
            ch = int(pv.get("changed", 0))
            cards.append(_card(f"changed:{v}", f"changed view {v}", f"{ch:,}",
                               f"{ch / max(items, 1):.1%} of items: tourney ≠ base", ch))
        d = s.get("disagreements", {})
        rows = int(d.get("rows", 0))
        parts = ", ".join(f"{_e(k)} {int(v):,}" for k, v in d.items() if k != "rows")
        cards.append(_card("review", "review list", f"{rows:,}", parts or "rows in disagreements/", rows))
    if "model_items" in s:
        mi = int(s["model_items"])
        cards.append(_card("model", "model", f"{mi:,}", "items in the model's statistics" +
                           (" (the saved model's and these)" if s.get("command") == "update" else ""), mi))
    pairs = sum(int(pv.get("pairs", 0)) for pv in s["per_view"].values())
    fb = int(s.get("fallback_pairs", 0))
    nv = len(s["per_view"])
    cards.append(_card("fallback", "fallback pairs", f"{fb:,}", f"of {pairs:,} pair masks ({nv} view"
                       f"{'' if nv == 1 else 's'}) had too few items", fb))
    if "timings_s" in s and "total" in s["timings_s"]:
        steps = " · ".join(f"{_e(k)} {v:.1f} s" for k, v in s["timings_s"].items() if k != "total")
        cards.append(_card("time", "run time", f"{s['timings_s']['total']:.1f} s", steps, s["timings_s"]["total"]))
    return '<div class="cards">' + "".join(cards) + "</div>"


def _comparison_section(data: ReportData) -> str:
    comp = data.comparison
    if not data.rows:
        return ('<h2 id="heatmap">Labels</h2><p class="note">This output holds no labels (a fit or update '
                'writes only the model).</p>')
    if comp is None:
        return ('<h2 id="heatmap">Labels of view A against view B</h2><p class="note">This run has one view '
                'and no annotation, so there is nothing to compare its labels with.</p>')
    k = len(data.names)
    shown = _shown_classes(comp.conf, k)
    what = "the two views" if comp.row_title.startswith("view") else "the annotation and the view"
    note = (f'Each row shows where the items that {_e(comp.row_title)} put in one class went in '
            f'{_e(comp.col_title)} (shares of the row; hover a cell for counts). A strong diagonal means '
            f'{what} agree. Left the base cosine argmax, right the pairwise tourney.')
    if len(shown) < k:
        note += f" Showing the {len(shown)} most frequent of {k} classes."
    if comp.dropped:
        note += f" {comp.dropped:,} rows without a known class on one side are left out."
    titles = {kind: f"{kind}{' (cosine argmax)' if kind == 'base' else ''} · weighted F1 "
                    f"{_f(comp.f1(kind))}" for kind in ("base", "tourney")}
    maps = "".join(f'<div class="panel">{_heatmap(comp.conf[kind], data.names, shown, titles[kind], comp.row_title, comp.col_title, row_labels=(i == 0))}</div>'
                   for i, kind in enumerate(("base", "tourney")))
    out = [f'<h2 id="heatmap">{_e(comp.row_title.capitalize())} against {_e(comp.col_title)}: base and tourney</h2>',
           f'<p class="note">{note}</p><div class="row">{maps}</div>{_ramp_legend()}']
    base, tour = per_class_f1(comp.conf["base"]), per_class_f1(comp.conf["tourney"])
    support = comp.conf["tourney"].sum(axis=0) + comp.conf["tourney"].sum(axis=1)
    out.append(f'<h2 id="classes">Per-class agreement of {_e(comp.row_title)} and {_e(comp.col_title)}</h2>'
               f'<p class="note">F1 between the two label sources for each class, base (grey) and tourney '
               f'(blue); the classes the tourney helped most come first, those it hurt last. The items '
               f'column counts the class on either side (tourney labels).</p>'
               f'<div class="panel">{_class_bars(base, tour, support, data.names, shown)}</div>')
    return "".join(out)


#: What a view's ``margin_V`` measures, by mode (the unit follows the decision: see :func:`collect`).
MARGIN_MEANING = {"bracket": "the margin of its final match", "top-t": "the margin of its final match",
                  "round-robin": "its margin over its closest rival",
                  "score": "how far its mean pair margin leads the runner-up class's"}


def _margins_section(data: ReportData, method: dict) -> str:
    if not data.rows:
        return ""
    figs = "".join(f'<div class="panel">{_histogram(data.margins[v], v, data.margin_max, data.margin_unit)}</div>' for v in data.views)
    key = (f' <span style="color:{TOURNEY_COLOUR}">■</span> views agree '
           f'<span style="color:{DISAGREE_COLOUR}">■</span> views disagree.') if len(data.views) > 1 else ""
    unit = ("within-class standard deviations of the pair's discriminant" if method.get("decision") == "discriminant"
            else "cosine on the pair's mask")
    meaning = MARGIN_MEANING.get(str(method.get("mode")), "its margin")
    return ('<h2 id="margins">Margins</h2><p class="note">How clearly each item\'s tourney label won: '
            f'{_e(meaning)}, in {_e(unit)} (mode {_e(method.get("mode", "?"))}). Small means a near tie.{key}</p>'
            f'<div class="row">{figs}</div>')


def _fallback_section(data: ReportData, s: dict, limit: int = 200) -> str:
    out = ['<h2 id="fallback">Pairs that fell back</h2>']
    min_items = s.get("method", {}).get("min_items", "?")
    if data.fallback is not None:
        t = data.fallback
        rows = t.to_pylist()[:limit] if t.num_rows else []
        total = t.num_rows
    else:  # no model/ beside the outputs: the summary's list
        rows = [{"view": v, "pair": p} for v, pv in s["per_view"].items() for p in pv.get("fallback_pairs", [])]
        total = len(rows)
        rows = rows[:limit]
    pairs = sum(int(pv.get("pairs", 0)) for pv in s["per_view"].values())
    if not total:
        out.append(f'<p class="note">None: every one of the {pairs:,} pair masks (pairs × views) had at least '
                   f'{_e(min_items)} confident items on both sides, so every mask comes from the statistics.</p>')
        return "".join(out)
    out.append(f'<p class="note">{total:,} of {pairs:,} pair masks (pairs × views) had fewer than {_e(min_items)} items on a side; '
               f'their masks are the dimensions where the two class prompts differ most.'
               + (f" The first {limit} are listed." if total > limit else "") + "</p>")
    if "class_a" in rows[0]:
        body = "".join(f'<tr><td>{_e(r["view"])}</td><td>{_e(r["class_a"])}</td><td class="num">{int(r["n_a"]):,}</td>'
                       f'<td>{_e(r["class_b"])}</td><td class="num">{int(r["n_b"]):,}</td></tr>' for r in rows)
        out.append('<table class="fallback"><thead><tr><th>view</th><th>class A</th><th class="num">items A</th>'
                   f'<th>class B</th><th class="num">items B</th></tr></thead><tbody>{body}</tbody></table>')
    else:
        body = "".join(f'<tr><td>{_e(r["view"])}</td><td>{_e(r["pair"])}</td></tr>' for r in rows)
        out.append(f'<table class="fallback"><thead><tr><th>view</th><th>pair</th></tr></thead><tbody>{body}</tbody></table>')
    return "".join(out)


def _review_section(data: ReportData, s: dict) -> str:
    t = data.top
    total = int(s.get("disagreements", {}).get("rows", t.num_rows))
    out = ['<h2 id="review">Top of the review list</h2>']
    if not t.num_rows:
        out.append('<p class="note">No item has views that disagree or an annotation that differs from its '
                   'label.</p>')
        return "".join(out)
    out.append(f'<p class="note">The first {t.num_rows:,} of {total:,} rows of <code>disagreements/</code>, '
               'most certain errors first. Per view: base → <span class="changed">tourney</span> label '
               '(blue where the tourney changed it) and its margin.</p>')
    views = data.views
    has_ann = "annotation" in t.column_names
    head = ['<th class="num">#</th>', "<th>id</th>"] + (["<th>annotation</th>"] if has_ann else []) + \
        ["<th>final label</th>"] + [f"<th>view {_e(v)}</th>" for v in views] + \
        ["<th>reason</th>", '<th class="num">priority</th>']
    body = []
    for i, r in enumerate(t.to_pylist(), 1):
        cells = [f'<td class="num">{i}</td>', f'<td class="id">{_e(r.get("id"))}</td>']
        if has_ann:
            ann = r.get("annotation")
            cells.append(f"<td>{_e(ann) if ann is not None else '<span class=muted>–</span>'}</td>")
        cells.append(f"<td><b>{_e(r.get('final_label'))}</b></td>")
        for v in views:
            b, lab, m = r.get(f"base_{v}"), r.get(f"label_{v}"), r.get(f"margin_{v}")
            lab_html = f'<span class="changed">{_e(lab)}</span>' if lab != b else _e(lab)
            pre = f"{_e(b)} → " if lab != b else ""
            cells.append(f"<td>{pre}{lab_html} <span class=muted>({_f(m, 2)})</span></td>")
        reason = str(r.get("reason", ""))
        cells.append(f'<td><span class="tag {_e(reason.replace("+", ""))}">{_e(reason)}</span></td>')
        cells.append(f'<td class="num">{_f(r.get("priority"))}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    out.append(f'<table class="review"><thead><tr>{"".join(head)}</tr></thead><tbody>{"".join(body)}</tbody></table>')
    return "".join(out)


def _dims(method: dict) -> str:
    m = method.get("m", method.get("dims", "?"))
    if isinstance(m, dict):
        return ", ".join(f"{v}: {x}" for v, x in m.items()) if len(set(m.values())) > 1 else str(next(iter(m.values()), "?"))
    return str(m)


def render(data: ReportData, summary: dict) -> str:
    """The whole page as one string."""
    s = summary
    m = s.get("method", {})
    title = f"pairwise-dask report · {Path(str(s['items'].get('path', ''))).name or 'run'}"
    sub = (f"run <code>{_e(s.get('run_id', ''))}</code> · items <code>{_e(s['items'].get('path', ''))}</code> · "
           f"classes <code>{_e(s['classes'].get('path', ''))}</code> · mode {_e(m.get('mode', '?'))}, "
           f"m = {_e(_dims(m))}, seed {_e(m.get('seed', '?'))}")
    labelled = "labelled_items" in s
    sections = ((("heatmap", "heat maps"), ("classes", "per class"), ("margins", "margins")) if data.rows and data.comparison
                else (("margins", "margins"),) if data.rows else ()) + (("fallback", "fallback pairs"),) + \
        ((("review", "review list"),) if labelled else ())
    nav = " · ".join(f'<a href="#{a}">{t}</a>' for a, t in sections)
    vers = s.get("versions", {})
    foot = (f"pairwise-dask {_e(s.get('version', ''))} · "
            + " · ".join(f"{_e(k)} {_e(v)}" for k, v in vers.items())
            + f" · cluster: {_e(s.get('cluster', {}).get('scheduler', ''))}, {_workers(s.get('cluster', {}))}")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>"
            f"<h1>{_e(title)}</h1><div class=\"sub\">{sub}</div><div class=\"sub\">{nav}</div>"
            f"{_headline(s)}{_comparison_section(data)}{_margins_section(data, m)}"
            f"{_fallback_section(data, s)}{_review_section(data, s) if labelled else ''}"
            f"<footer>{foot}</footer></main></body></html>\n")


def write_report(out_dir: "Path | Location", summary: dict, *, top: int = 50) -> "Path | Location":
    """Write ``out_dir/report.html`` from ``labels/``, ``disagreements/`` (and ``model/`` when
    present) under ``out_dir`` and the run's ``summary``; return its location.

    Called on the staging folder right before the commit, so the page is published with the rest.
    """
    out_dir = Location.of(out_dir)
    page = render(collect(out_dir, summary, top=top), summary)
    path = out_dir / "report.html"
    tmp = out_dir / "report.html.tmp"
    tmp.write_text(page)
    tmp.replace(path)
    return Path(path.path) if path.local else path
