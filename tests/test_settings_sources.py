"""Settings from Python and from flags: views given as a dict (like a job file's table) or as the
``--views`` text, and errors that name where a value was set (the command line or the job file)."""
from __future__ import annotations

from pathlib import Path

import pytest

from fixtures import make_catalog, run_cli
from pairwise_dask import job
from pairwise_dask.config import COMMAND_LINE, load_settings
from pairwise_dask.errors import BadInputError


def test_views_as_a_dict_a_string_or_pairs_are_the_same_settings() -> None:
    base = {"items": "i.parquet", "classes": "c.parquet", "out": "o"}
    pairs = load_settings(None, base | {"views": (("a", "emb_a"), ("b", "emb_b"))})
    as_dict = load_settings(None, base | {"views": {"a": "emb_a", "b": "emb_b"},
                                          "class_columns": {"b": "prompt_b"}})
    as_text = load_settings(None, base | {"views": "a=emb_a,b=emb_b"})
    assert pairs.views == as_dict.views == as_text.views == (("a", "emb_a"), ("b", "emb_b"))
    assert as_dict.class_columns == (("b", "prompt_b"),)
    assert pairs.fingerprint() == as_dict.replace(class_columns=()).fingerprint() == as_text.fingerprint()


def test_an_option_set_by_a_flag_is_reported_as_the_command_lines(tmp_path: Path) -> None:
    """``--dims 9999`` was reported as the job file's value (its file named), which sends the
    user to edit a file that is right; a job file's own value is still named by its file."""
    cat = make_catalog(tmp_path / "data", d=8)
    job_file = cat.job_file(tmp_path / "out", method={"dims": 3})
    s = load_settings(str(job_file), {"dims": 9999})
    assert s.where("dims") == COMMAND_LINE and s.where("seed") == s.job_file
    with pytest.raises(BadInputError) as e:
        job.prepare(s)
    assert e.value.file == COMMAND_LINE and "dims = 9999 is larger than" in str(e.value)
    in_file = cat.job_file(tmp_path / "out", method={"dims": 99})
    with pytest.raises(BadInputError) as e:
        job.prepare(load_settings(str(in_file)))
    assert e.value.file == str(in_file.resolve())
    res = run_cli("run", str(job_file), "--dims", "9999")
    assert res.returncode == 2 and res.stderr.startswith("pairwise-dask: error: the command line: dims = 9999"), \
        res.stderr


def test_unknown_override_keys_are_refused_and_tables_are_read(tmp_path: Path) -> None:
    """load_settings took any key: a typo (``outt``) or a job file's table (``{"method": {...}}``)
    left the option at the job file's value without a word."""
    cat = make_catalog(tmp_path / "data")
    job_file = str(cat.job_file(tmp_path / "out"))
    with pytest.raises(BadInputError, match=r"unknown key 'outt'. Did you mean 'out'\?"):
        load_settings(job_file, {"outt": str(tmp_path / "x")})
    with pytest.raises(BadInputError, match=r"unknown key 'method.dimz'. Did you mean 'method.dims'\?"):
        load_settings(job_file, {"method": {"dimz": 3}})
    with pytest.raises(BadInputError, match=r"unknown key 'cluster.dims'"):  # an option of another table
        load_settings(job_file, {"cluster": {"dims": 3}})
    nested = load_settings(job_file, {"method": {"dims": 3, "seed": 7}, "cluster": {"workers": 1}})
    assert (nested.dims, nested.seed, nested.workers) == (3, 7, 1)
    assert nested == load_settings(job_file, {"dims": 3, "seed": 7, "workers": 1})


def test_relative_paths_given_to_the_api_are_recorded_whole(tmp_path: Path, monkeypatch) -> None:
    """As the command line's flags: a relative path is from where the caller runs, and recorded
    absolute (summary.json wrote "relabel-api/today" as given)."""
    import os

    monkeypatch.chdir(tmp_path)
    s = load_settings(None, {"items": "data/*.parquet", "classes": "c.parquet", "out": "relabel-api/today",
                             "views": "a=emb_a"})
    assert s.out == os.path.join(str(tmp_path), "relabel-api", "today")
    assert s.items == os.path.join(str(tmp_path), "data", "*.parquet")
    assert s.classes == os.path.join(str(tmp_path), "c.parquet")
    assert load_settings(None, {"items": "s3://b/x", "classes": "c", "out": "memory://o", "views": "a"}).out == "memory://o"
def test_views_separated_by_spaces_say_they_are_comma_separated(capsys) -> None:
    """`--views 'image=img_emb text=txt_emb'` read as one view of column 'img_emb text=txt_emb',
    refused later as "is missing" with no hint."""
    from pairwise_dask import cli
    from pairwise_dask.config import parse_views

    with pytest.raises(BadInputError) as info:
        parse_views("image=img_emb text=txt_emb")
    assert info.value.file == COMMAND_LINE
    assert str(info.value) == ("the command line: --views 'image=img_emb text=txt_emb': column 'img_emb "
                               "text=txt_emb' holds '='. Separate the views with commas: --views "
                               "image=img_emb,text=txt_emb (a column whose name has spaces goes in the job "
                               "file's [views] table)")
    with pytest.raises(BadInputError, match="column 'img_emb txt_emb' holds a space. Separate the views with "
                                            "commas: --views img_emb,txt_emb"):
        parse_views("img_emb txt_emb")
    # commas with spaces after them, and bare columns (views named after them), are fine
    assert parse_views("image=img_emb, text=txt_emb") == (("image", "img_emb"), ("text", "txt_emb"))
    assert parse_views("img_emb,txt_emb") == (("img_emb", "img_emb"), ("txt_emb", "txt_emb"))
    # the command line: exit 2, one line; --help documents the bare form
    assert cli.main(["run", "--items", "x", "--classes", "y", "--out", "z", "--views", "a=emb_a b=emb_b"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Separate the views with commas: --views a=emb_a,b=emb_b" in err
    assert "a bare COLUMN is a view named after its column" in " ".join(cli.build_parser()._subparsers._group_actions[0]
                                                                        .choices["run"].format_help().split())
