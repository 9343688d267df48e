"""What the command line prints: the end summary's counts and the --help text."""
from __future__ import annotations

from pairwise_dask import cli


def _summary(rows: int, partitions: int, classes: int, workers: int) -> dict:
    """The fields format_summary reads of a fit's summary."""
    return {"command": "fit", "run_id": "r", "timings_s": {"total": 1.0, "read": 0.5},
            "items": {"rows": rows, "partitions": partitions}, "classes": {"names": [f"c{i}" for i in range(classes)]},
            "views": {"a": "emb_a"}, "cluster": {"workers": workers}, "per_view": {"a": {"pairs": 2}},
            "fallback_pairs": 0, "model_items": rows, "out": "/o", "report": "report.html"}


def test_the_summary_counts_read_in_the_singular_and_the_plural() -> None:
    """It printed "1 items in 1 partitions, …; 1 workers"."""
    one = cli.format_summary(_summary(1, 1, 2, 1)).splitlines()[1]
    assert one == "  read       1 item in 1 partition, 2 classes, views a=emb_a; 1 worker"
    many = cli.format_summary(_summary(3107, 4, 21, 2)).splitlines()[1]
    assert many == "  read       3,107 items in 4 partitions, 21 classes, views a=emb_a; 2 workers"


def test_the_top_level_help_has_one_examples_block() -> None:
    """It had two "examples:" blocks (run's, then the model commands')."""
    text = cli.build_parser().format_help()
    assert text.count("examples:") == 1
    for line in ("pairwise-dask run jobs/demo.toml ", "pairwise-dask update models/v1/model",
                 "Outputs under OUT: labels/"):
        assert line in text
    assert text.index("pairwise-dask apply models/v2/model") < text.index("Outputs under OUT")
