"""An annotation with nulls: accuracy is measured over the annotated items, and the summary, the
printed summary and the report say over how many (0.658 over 2,178 of 3,107 items read as 0.658
of everything)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fixtures import make_catalog
from pairwise_dask import job
from pairwise_dask.cli import format_summary
from pairwise_dask.summary import REASON_ORDER


def test_accuracy_is_over_the_annotated_items_and_says_so(tmp_path: Path, client) -> None:
    cat = make_catalog(tmp_path / "data", n=120, noise=1.2)
    label = cat.items.column("label").to_pylist()
    holes = set(range(0, 120, 3))
    partial = cat.items.set_column(cat.items.column_names.index("label"), "label",
                                   pa.array([None if i in holes else x for i, x in enumerate(label)]))
    pq.write_table(partial, tmp_path / "partial.parquet")
    summary = job.run(cat.settings(tmp_path / "out", items=str(tmp_path / "partial.parquet")), client=client)
    assert summary["final"]["annotated_items"] == 80 and summary["labelled_items"] == 120
    labels = pq.read_table(tmp_path / "out" / "labels").to_pandas().set_index("id")
    kept = [i for i in range(120) if i not in holes]
    ids = partial.column("id").to_pylist()
    truth = np.array([label[i] for i in kept])
    final = labels.loc[[ids[i] for i in kept], "final_label"].to_numpy()
    assert abs(summary["final"]["accuracy"] - float((final == truth).mean())) < 1e-9
    assert "(against the annotation of 80 annotated items)" in format_summary(summary)
    assert "over the 80 of 120 items with an annotation" in (tmp_path / "out" / "report.html").read_text()
    full = job.run(cat.settings(tmp_path / "full"), client=client)  # every item annotated: no note
    assert full["final"]["annotated_items"] == 120
    assert "annotated items" not in format_summary(full)
    assert "items with an annotation" not in (tmp_path / "full" / "report.html").read_text()


def test_the_summary_lists_the_reasons_in_the_review_lists_order(tmp_path: Path, client) -> None:
    """The reasons came in the order of their first row, so two runs printed them differently."""
    cat = make_catalog(tmp_path / "data", n=200, noise=1.5)
    flipped = cat.items.column("label").to_pylist()
    flipped = flipped[100:] + flipped[:100]  # half the annotations wrong: every reason occurs
    pq.write_table(cat.items.set_column(cat.items.column_names.index("label"), "label", pa.array(flipped)),
                   tmp_path / "items.parquet")
    summary = job.run(cat.settings(tmp_path / "out", items=str(tmp_path / "items.parquet")), client=client)
    reasons = [k for k in summary["disagreements"] if k != "rows"]
    assert reasons == [r for r in REASON_ORDER if r in reasons] and len(reasons) == 3, reasons


def test_an_annotation_that_is_null_everywhere_gives_null_figures(tmp_path: Path, client) -> None:
    """No annotated item: accuracy is null in summary.json (it was NaN, which JSON does not have and
    strict parsers refuse), and the printed summary says why there is none."""
    import json

    from pairwise_dask.io import json_text

    cat = make_catalog(tmp_path / "data", n=120)
    none = cat.items.set_column(cat.items.column_names.index("label"), "label", pa.nulls(120, pa.string()))
    pq.write_table(none, tmp_path / "none.parquet")
    summary = job.run(cat.settings(tmp_path / "out", items=str(tmp_path / "none.parquet")), client=client)

    def refuse(c: str) -> None:
        raise ValueError(f"not JSON: {c}")

    for text in ((tmp_path / "out" / "summary.json").read_text(), json_text(summary)):
        saved = json.loads(text, parse_constant=refuse)
        assert saved["final"] == {"accuracy": None, "macro_f1": None, "annotated_items": 0}
        assert {saved["per_view"][v]["accuracy_tourney"] for v in ("a", "b")} == {None}
    printed = format_summary(summary)
    assert "no item has an annotation" in printed and not re.search(r"\bnan\b", printed)
    assert not re.search(r"\bnan\b", (tmp_path / "out" / "report.html").read_text(), re.I)


def test_a_qa_runs_accuracy_is_marked_in_sample(tmp_path: Path, client) -> None:
    """With fit_on = annotation the statistics are fitted on the annotation the accuracy is then
    measured against: the printed summary and the report say the figure is in-sample. The fallback
    count is of pair masks (pairs × views), which it now says."""
    cat = make_catalog(tmp_path / "data", n=120, noise=1.2)
    qa = job.run(cat.settings(tmp_path / "qa", fit_on="annotation"), client=client)
    text = format_summary(qa)
    assert "(against the annotation; in-sample: the statistics were fitted on it)" in text, text
    assert "in-sample: the statistics were fitted on the annotation" in (tmp_path / "qa" / "report.html").read_text()
    views = len(qa["per_view"])
    assert re.search(rf"fallback   \d+ of \d+ pair masks \({views} views\) had too few items", text), text
    plain = job.run(cat.settings(tmp_path / "plain"), client=client)
    assert "in-sample" not in format_summary(plain)
    assert "in-sample" not in (tmp_path / "plain" / "report.html").read_text()
