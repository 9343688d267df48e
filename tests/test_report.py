"""report.html: parses, embeds its figures, needs no network, and its numbers match the run."""
from __future__ import annotations

import re

import json
import math
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pairwise_dask import report
from pairwise_dask.metrics import weighted_f1
from pairwise_dask.report import collect, write_report

DEMO_JOB = Path(__file__).resolve().parents[1] / "jobs" / "demo.toml"


class Page(HTMLParser):
    """Every start tag with its attributes, the text of data-metric cards, table cells."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.stack: list[str] = []
        self.cells: list[list[str]] = []  # rows of <table class="review">
        self._in_review = False
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "table" and a.get("class") == "review":
            self._in_review = True
        if self._in_review and tag == "tr":
            self.cells.append([])
        if self._in_review and tag == "td":
            self.cells[-1].append("")
        self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._in_review = False
        if self.stack and self.stack[-1] == tag:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._in_review and self.cells and self.cells[-1] and "td" in self.stack:
            self.cells[-1][-1] += data

    def all(self, tag: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == tag]

    def metrics(self) -> dict[str, str | None]:
        return {a["data-metric"]: a.get("data-value") for _, a in self.tags if "data-metric" in a}


def parse(path: Path) -> Page:
    p = Page()
    p.feed(path.read_text(encoding="utf-8"))
    p.close()
    return p


def assert_offline(page: Page) -> None:
    """Nothing the page loads or links to leaves the file."""
    for tag, a in page.tags:
        for attr in ("src", "href", "xlink:href", "data"):
            v = (a.get(attr) or "").strip().lower()
            assert not v.startswith(("http:", "https:", "//", "ftp:")), (tag, attr, v)
        assert tag not in ("link", "iframe", "img", "object", "embed"), tag
        if tag == "script":
            assert "src" not in a


# --- a real run of the demo job ------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    from pairwise_dask.config import load_settings
    from pairwise_dask.job import run

    out = tmp_path_factory.mktemp("demo") / "out"
    summary = run(load_settings(str(DEMO_JOB), {"out": str(out), "workers": 1}))
    return out, summary


def test_demo_report_embeds_its_figures_and_needs_no_network(demo_run: tuple[Path, dict]) -> None:
    out, summary = demo_run
    path = write_report(out, summary)
    assert path == out / "report.html"
    page = parse(path)
    assert_offline(page)
    svgs = page.all("svg")
    # two heat maps + legend + per-class bars + one margin histogram per view
    assert len(svgs) >= 4 + len(summary["views"])
    assert len(page.all("rect")) > len(summary["classes"]["names"]) ** 2 * 2  # the heat maps' cells
    ids = {a.get("id") for _, a in page.tags}
    assert {"heatmap", "classes", "margins", "fallback", "review"} <= ids


def test_demo_report_numbers_match_the_summary(demo_run: tuple[Path, dict]) -> None:
    out, summary = demo_run
    m = parse(write_report(out, summary)).metrics()
    assert int(m["items"]) == summary["items"]["rows"]
    assert int(m["classes"]) == len(summary["classes"]["names"])
    assert int(m["views"]) == len(summary["views"])
    for pair, a in summary["agreement_weighted_f1"].items():
        base, tour = (float(x) for x in m[f"agreement:{pair}"].split("|"))
        assert (base, tour) == (a["base"], a["tourney"])
    html_text = (out / "report.html").read_text(encoding="utf-8")

    def shown(metric: str) -> str:  # a card's visible value, tags stripped
        value = re.search(rf'data-metric="{re.escape(metric)}"[^>]*>.*?<div class="v">(.*?)</div>', html_text).group(1)
        return re.sub(r"<[^>]+>", "", value)

    for v, pv in summary["per_view"].items():
        base, tour = (float(x) for x in m[f"accuracy:{v}"].split("|"))
        assert (base, tour) == (pv["accuracy_base"], pv["accuracy_tourney"])
        # and the page shows them in that order: base → tourney
        assert shown(f"accuracy:{v}") == f"{pv['accuracy_base']:.3f} → {pv['accuracy_tourney']:.3f}"
        assert int(m[f"changed:{v}"]) == pv["changed"]
    for pair, a in summary["agreement_weighted_f1"].items():
        assert shown(f"agreement:{pair}") == f"{a['base']:.3f} → {a['tourney']:.3f}"
    assert float(m["accuracy:final"]) == summary["final"]["accuracy"]
    assert int(m["review"]) == summary["disagreements"]["rows"]
    assert int(m["fallback"]) == summary["fallback_pairs"]


def test_demo_figures_are_computed_from_the_outputs_consistently(demo_run: tuple[Path, dict]) -> None:
    """The heat maps' counts, recomputed from labels/, give the job's own agreement numbers."""
    out, summary = demo_run
    data = collect(out, summary)
    assert data.rows == summary["items"]["rows"]
    comp = data.comparison
    assert comp is not None and comp.dropped == 0
    (pair, a), = summary["agreement_weighted_f1"].items()
    assert math.isclose(comp.f1("base"), a["base"], rel_tol=1e-12)
    assert math.isclose(comp.f1("tourney"), a["tourney"], rel_tol=1e-12)
    for v in data.views:
        assert data.margins[v].sum() == summary["items"]["rows"]
    # the margins' axis is in the decision's own unit (the defaults: a discriminant's std units)
    assert summary["method"]["decision"] == "discriminant" and data.margin_unit == "margin (standard deviations)"
    assert collect(out, summary | {"method": {"decision": "cosine"}}).margin_unit == "cosine margin"
    # the review table is the head of disagreements/, in order
    dis = pq.read_table(out / "disagreements")
    page = parse(write_report(out, summary, top=7))
    assert [row[1] for row in page.cells if row] == dis.column("id").to_pylist()[:7]


# --- small hand-made outputs: one view, hostile names, many classes, several unsorted parts ---------

def _fake_run(out: Path, names: list[str], n: int, *, parts: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    k = len(names)
    ann = rng.integers(0, k, n)
    base = np.where(rng.random(n) < 0.6, ann, rng.integers(0, k, n))
    label = np.where(rng.random(n) < 0.7, ann, base)
    margin = rng.random(n).astype(np.float32) * 1.3  # some beyond the last bin
    nm = np.asarray(names, dtype=object)
    ids = np.asarray([f"item-{i}" for i in range(n)], dtype=object)
    ann_s = nm[ann].copy()
    ann_s[:5] = "not a class"  # annotations outside the class set are left out of the maps
    labels = pa.table({"id": ids, "base_x": nm[base], "label_x": nm[label], "margin_x": margin,
                       "final_label": nm[label], "agree": np.ones(n, bool), "annotation": ann_s})
    (out / "labels").mkdir(parents=True)
    (out / "disagreements").mkdir()
    for i, idx in enumerate(np.array_split(np.arange(n), parts)):
        pq.write_table(labels.take(idx), out / "labels" / f"part.{i:05d}.parquet")
        bad = idx[label[idx] != ann[idx]]
        dis = labels.take(bad).append_column("reason", pa.array(["annotation"] * len(bad)))
        dis = dis.append_column("priority", pa.array(rng.random(len(bad))))  # unsorted within a part
        pq.write_table(dis, out / "disagreements" / f"part.{i:05d}.parquet")
    conf = lambda a, b: np.bincount(a * k + b, minlength=k * k).reshape(k, k)  # noqa: E731
    ok = np.arange(n) >= 5
    return {"run_id": "fake", "version": "0", "items": {"path": "items.parquet", "rows": n}, "labelled_items": n,
            "classes": {"path": "classes.parquet", "names": names}, "views": {"x": "emb_x"},
            "method": {"min_items": 5, "m": {"x": 10}},
            "per_view": {"x": {"changed": int((base != label).sum()), "pairs": k * (k - 1) // 2,
                               "fallback_pairs": [f"{names[0]} / {names[1]}"],
                               "accuracy_base": float(np.mean(base[ok] == ann[ok])),
                               "accuracy_tourney": float(np.mean(label[ok] == ann[ok]))}},
            "agreement_weighted_f1": {},
            "disagreements": {"rows": int((label != ann).sum()), "annotation": int((label != ann).sum())},
            "fallback_pairs": 1, "_conf": {"base": conf(ann[ok], base[ok]), "tourney": conf(ann[ok], label[ok])}}


def test_one_view_compares_with_the_annotation_and_escapes_every_name(tmp_path: Path) -> None:
    names = ['<script>alert("x")</script>', "a & b", "plain", 'quote"d']
    summary = _fake_run(tmp_path, names, 500, parts=3)
    data = collect(tmp_path, summary, top=10)
    assert data.comparison is not None and data.comparison.row_title == "annotation"
    assert data.comparison.dropped == 5
    for kind, c in summary["_conf"].items():
        np.testing.assert_array_equal(data.comparison.conf[kind], c)
        assert math.isclose(data.comparison.f1(kind), weighted_f1(c))
    # the top rows are the global top, across unsorted parts
    dis = pq.read_table(tmp_path / "disagreements")
    want = np.sort(dis.column("priority").to_numpy())[::-1][:10]
    np.testing.assert_array_equal(data.top.column("priority").to_numpy(), want)
    # no model/: the fallback pairs come from the summary
    text = write_report(tmp_path, summary, top=10).read_text()
    assert "<script" not in text and "&lt;script&gt;" in text
    assert 'quote"d' not in text
    page = parse(tmp_path / "report.html")
    assert_offline(page)
    assert any(names[0] in t for t in page.text)  # the escaped name reads back as itself
    assert "a &amp; b / &lt;script" not in text and "a &amp; b" in text


def test_many_classes_show_the_most_frequent(tmp_path: Path) -> None:
    names = [f"class {i:03d}" for i in range(120)]
    summary = _fake_run(tmp_path, names, 3000, parts=2, seed=1)
    page = parse(write_report(tmp_path, summary))
    heat = [a for a in page.all("rect") if a.get("width") == a.get("height") and a.get("fill", "").startswith("#")]
    assert len(heat) == 2 * report.MAP_CLASSES ** 2
    assert f"{report.MAP_CLASSES} most frequent of 120 classes" in "".join(page.text)


def test_write_report_replaces_an_older_page(tmp_path: Path) -> None:
    summary = _fake_run(tmp_path, ["a", "b"], 50, parts=1)
    (tmp_path / "report.html").write_text("old")
    write_report(tmp_path, summary)
    assert (tmp_path / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert not list(tmp_path.glob("*.tmp"))
    json.dumps({k: v for k, v in summary.items() if k != "_conf"})  # the fake stays a plain summary


def test_an_output_without_labels_still_gets_a_page(tmp_path: Path) -> None:
    """A fit writes only model/: the page says so instead of drawing empty figures."""
    summary = _fake_run(tmp_path / "x", ["a", "b"], 10, parts=1)
    for key in ("disagreements", "labelled_items", "agreement_weighted_f1"):
        summary.pop(key)
    summary |= {"command": "fit", "model_items": 10}
    page = parse(write_report(tmp_path, summary))
    text = "".join(page.text)
    assert "holds no labels" in text and "review list" not in text.lower()
    metrics = page.metrics()
    assert metrics["model"] == "10" and not any(k.startswith(("changed:", "review")) for k in metrics)
    # every link of the page's navigation leads to a section it has
    ids = {a["id"] for _, a in page.tags if a.get("id")}
    hrefs = [a["href"][1:] for a in page.all("a") if (a.get("href") or "").startswith("#")]
    assert hrefs and set(hrefs) <= ids, (hrefs, ids)
    assert_offline(page)


def test_every_navigation_link_of_a_run_page_has_its_section(demo_run: tuple[Path, dict]) -> None:
    out, _ = demo_run
    page = parse(out / "report.html")
    ids = {a["id"] for _, a in page.tags if a.get("id")}
    hrefs = [a["href"][1:] for a in page.all("a") if (a.get("href") or "").startswith("#")]
    assert set(hrefs) == {"heatmap", "classes", "margins", "fallback", "review"} and set(hrefs) <= ids
