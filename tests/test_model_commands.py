"""``apply`` and ``update`` on the command line take a saved model's settings; commands do not
replace each other's outputs. The CLI runs in this process against the session's real cluster."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pairwise_dask import cli, job
from pairwise_dask.config import load_settings
from pairwise_dask.model import read_params

from catalogs import make_catalog

#: an updatable model's method (as jobs/nightly.toml), every option unlike the defaults
NIGHTLY = {"refine": 0, "fit_on": "view", "rotate": "none", "decision": "cosine", "dims": 5, "mix": 0.0,
           "mode": "bracket", "min_items": 3}


def _flags(cat: dict) -> list[str]:
    return ["--items", cat["items"], "--views", ",".join(f"{v}={c}" for v, c in cat["views"])]


def _main(client, *args: str) -> int:
    return cli.main([*args, "--scheduler", client.scheduler.address, "--quiet"])


@pytest.fixture
def fitted(client, tmp_path: Path) -> tuple[dict, Path]:
    cat = make_catalog(tmp_path / "data", n=400)
    job.fit(load_settings(None, {**cat, "out": str(tmp_path / "fit"), **NIGHTLY}), client=client)
    return cat, tmp_path / "fit" / "model"


def test_update_and_apply_without_options_use_the_models_method(client, fitted, tmp_path):
    cat, model = fitted
    new = make_catalog(tmp_path / "new", n=300, seed=1)
    assert _main(client, "update", str(model), *_flags(new), "--out", str(tmp_path / "upd")) == 0
    before, after = read_params(model), read_params(tmp_path / "upd" / "model")
    for name, value in NIGHTLY.items():
        assert before[name] == after[name] == value, name
    assert after["items"] == 400 + 300
    # the same update from the API, the model's settings spelt out: the same model, byte for byte
    job.fit(load_settings(None, {**new, "label": "", "classes": str(model / "classes.parquet"),
                                 "out": str(tmp_path / "api"), **NIGHTLY}), client=client, base_model=str(model))
    for f in ("moments.parquet", "masks.parquet"):
        assert pq.read_table(tmp_path / "api" / "model" / f).equals(pq.read_table(tmp_path / "upd" / "model" / f))

    assert _main(client, "apply", str(model), *_flags(new), "--out", str(tmp_path / "applied")) == 0
    summary = json.loads((tmp_path / "applied" / "summary.json").read_text())
    assert {k: summary["method"][k] for k in NIGHTLY} == NIGHTLY  # what the labels were made with
    assert summary["classes"]["path"] == str(model / "classes.parquet")
    # the API labels with the model's method whatever defaults its settings carry, and records it;
    # the tourney's own options (mode here) are the settings'
    api = job.apply(load_settings(None, {**new, "label": "", "out": str(tmp_path / "applied-api"), "mode": "bracket"}),
                    str(model), client=client)
    assert {k: api["method"][k] for k in NIGHTLY} == NIGHTLY
    assert pq.read_table(tmp_path / "applied-api" / "labels").equals(pq.read_table(tmp_path / "applied" / "labels"))


def test_options_the_model_fixes_are_refused_all_at_once(client, fitted, tmp_path, capsys):
    cat, model = fitted
    out = tmp_path / "x"
    assert _main(client, "apply", str(model), *_flags(cat), "--out", str(out), "--dims", "10", "--refine", "3") == 2
    err = capsys.readouterr().err
    assert "dims = 10 (the model: 5)" in err and "refine = 3 (the model: 0)" in err and "fit a new model" in err
    assert _main(client, "update", str(model), *_flags(cat), "--out", str(out), "--rotate", "pca",
                 "--decision", "discriminant") == 2
    err = capsys.readouterr().err
    assert "rotate = 'pca' (the model: 'none')" in err and "decision = 'discriminant'" in err
    # every option the masks are made from is fixed for update, mix and min_items included
    assert _main(client, "update", str(model), *_flags(cat), "--out", str(out), "--mix", "0.5",
                 "--min-items", "7", "--dims", "6") == 2
    err = capsys.readouterr().err
    assert "mix = 0.5 (the model: 0)" in err and "min_items = 7 (the model: 3)" in err and "dims = 6" in err
    assert _main(client, "apply", str(model), *_flags(cat), "--out", str(out),
                 "--classes", cat["classes"]) == 2
    assert "takes the classes from the model" in capsys.readouterr().err
    assert not out.exists()
    # the tourney's own options are free: another seed and mode label with the same masks
    assert _main(client, "apply", str(model), *_flags(cat), "--out", str(out), "--seed", "7",
                 "--mode", "round-robin") == 0
    method = json.loads((out / "summary.json").read_text())["method"]
    assert method["seed"] == 7 and method["mode"] == "round-robin" and method["dims"] == 5


def test_fit_does_not_replace_a_runs_output(client, tmp_path, capsys):
    cat = make_catalog(tmp_path / "data", n=300)
    flags = [*_flags(cat), "--classes", cat["classes"], "--out", str(tmp_path / "out"), "--refine", "0"]
    assert _main(client, "run", *flags) == 0
    before = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert _main(client, "fit", *flags) == 2
    assert "already holds the output of `run`" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == before
    assert _main(client, "run", *flags) == 0  # the same command again: replaced, as ever
    assert _main(client, "fit", *flags, "--overwrite") == 0
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["command"] == "fit"


def test_apply_into_the_models_own_folder_is_refused(client, fitted, tmp_path, capsys):
    """`apply M/model --out M --overwrite` published labels/ and disagreements/ over M, deleting
    the very model it had applied (found by a fresh-user review). Refused now, with or without
    --overwrite, and M stays as it was."""
    cat, model = fitted
    before = sorted(p.relative_to(model.parent) for p in model.parent.rglob("*"))
    for extra in ([], ["--overwrite"]):
        assert _main(client, "apply", str(model), *_flags(cat), "--out", str(model.parent), *extra) == 2
        err = capsys.readouterr().err
        assert f"holds the model being applied ({model})" in err and "another --out" in err, err
    assert _main(client, "apply", str(model), *_flags(cat), "--out", str(model), "--overwrite") == 2
    assert sorted(p.relative_to(model.parent) for p in model.parent.rglob("*")) == before


def test_update_refuses_a_refined_model_and_a_view_it_lacks(client, tmp_path):
    from pairwise_dask.errors import BadInputError

    cat = make_catalog(tmp_path / "data", n=300)
    job.fit(load_settings(None, {**cat, "out": str(tmp_path / "refined"), "refine": 1, "rotate": "none"}), client=client)
    model = tmp_path / "refined" / "model"
    assert _main(client, "update", str(model), *_flags(cat), "--out", str(tmp_path / "u")) == 2
    with pytest.raises(BadInputError, match="refine > 0 cannot be updated"):
        job.fit(load_settings(None, {**cat, "out": str(tmp_path / "u"), "refine": 0, "rotate": "none"}),
                client=client, base_model=str(model))
    job.fit(load_settings(None, {**cat, "out": str(tmp_path / "plain"), **NIGHTLY}), client=client)
    with pytest.raises(BadInputError, match=r"the model has no view\(s\) c"):
        job.fit(load_settings(None, {**cat, "views": (("c", "emb_a"),), "out": str(tmp_path / "u"), **NIGHTLY}),
                client=client, base_model=str(tmp_path / "plain" / "model"))
    # fewer views than the model: the update once wrote a model without view b's moments
    with pytest.raises(BadInputError, match=r"the model's view\(s\) b are not among --views \(a\)"):
        job.fit(load_settings(None, {**cat, "views": (("a", "emb_a"),), "out": str(tmp_path / "u"), **NIGHTLY}),
                client=client, base_model=str(tmp_path / "plain" / "model"))
    assert _main(client, "update", str(tmp_path / "plain" / "model"), "--items", cat["items"], "--views", "a=emb_a",
                 "--out", str(tmp_path / "u")) == 2
    assert not (tmp_path / "u").exists()


# --- a saved model's method as the settings' defaults: no cluster needed --------------------

def _model_params(**method: object) -> dict:
    """A model's params.json as fit writes it: every [method] option, at its default unless given."""
    from pairwise_dask.config import OPTIONS

    return {o.name: o.default for o in OPTIONS if o.section == "method"} | method


def _plain(tmp_path: Path) -> dict:
    return {"items": str(tmp_path / "new.parquet"), "classes": str(tmp_path / "model" / "classes.parquet"),
            "out": str(tmp_path / "out"), "views": (("a", "emb_a"), ("b", "emb_b"))}


def test_a_job_file_option_wins_over_the_models_method_and_is_then_refused(tmp_path: Path) -> None:
    """apply and update take the model's method as their defaults, but an option the job file
    sets is the user's request: it must win over those defaults, so that the difference is
    named and refused, rather than be silently replaced by the model's value."""
    from pairwise_dask.config import check_model_method, model_method
    from pairwise_dask.errors import BadInputError

    params = _model_params(**NIGHTLY)
    job_file = tmp_path / "job.toml"
    job_file.write_text('items = "new.parquet"\nout = "out"\n[views]\na = "emb_a"\nb = "emb_b"\n'
                        "[method]\ndims = 3\n")
    s = load_settings(str(job_file), {"classes": str(tmp_path / "model" / "classes.parquet")},
                      defaults=model_method(params))
    assert s.dims == 3
    assert (s.refine, s.decision, s.rotate, s.min_items) == (0, "cosine", "none", 3)  # the rest: the model's
    with pytest.raises(BadInputError, match=re.escape("dims = 3 (the model: 5)")):
        check_model_method(s, params, "update")


def test_an_old_model_without_the_newer_options_is_read_as_the_method_it_had(tmp_path: Path) -> None:
    """A model saved before decision, prior, rotate, rotate_dims, keep_sample and fuse existed was
    fitted with the method before them (cosine, no prior, no rotation, every item, mean fusion).
    Its apply and update must default to that method, not to today's defaults (discriminant,
    pca), which its masks were not made with; an option it lacks that has no such old value is
    left to the settings rather than invented."""
    from pairwise_dask.config import check_model_method, model_method

    old = {k: v for k, v in _model_params(**NIGHTLY).items()
           if k not in ("decision", "prior", "rotate", "rotate_dims", "keep_sample", "fuse", "top_t")}
    got = model_method(old)
    assert {k: got[f"method.{k}"] for k in ("decision", "prior", "rotate", "rotate_dims", "keep_sample", "fuse")} == \
        {"decision": "cosine", "prior": 0.0, "rotate": "none", "rotate_dims": 0.0, "keep_sample": 0, "fuse": "mean"}
    assert "method.top_t" not in got
    s = load_settings(None, _plain(tmp_path), defaults=got)
    assert (s.decision, s.rotate, s.keep_sample, s.dims) == ("cosine", "none", 0, 5)
    check_model_method(s, old, "update")  # no option given: nothing differs from the model


def test_apply_may_fuse_the_views_otherwise_than_the_model(tmp_path: Path) -> None:
    """``fuse`` only adds up the views' pair margins while labelling: apply plays its own tourney
    on the model's masks, so ``--fuse llr`` on a model fitted with ``mean`` is honoured (and
    recorded), not refused nor replaced by the model's value. What the masks are made of is not."""
    from pairwise_dask.config import check_model_method, model_method, with_model_method
    from pairwise_dask.errors import BadInputError

    params = _model_params(decision="discriminant", fuse="mean", dims=5)
    s = load_settings(None, _plain(tmp_path) | {"fuse": "llr"}, defaults=model_method(params))
    check_model_method(s, params, "apply")
    assert with_model_method(s, params, "apply").fuse == "llr"
    with pytest.raises(BadInputError, match=re.escape("dims = 6 (the model: 5)")):
        check_model_method(s.replace(dims=6.0), params, "apply")


@pytest.mark.cluster
def test_the_help_examples_of_fit_update_and_apply_run_as_written(tmp_path: Path) -> None:
    """Pasted as shown in --help, the example chain failed at update (the demo's refine = 2)."""
    import shlex
    import shutil

    from catalogs import REPO
    from fixtures import run_cli

    shutil.copytree(REPO / "jobs", tmp_path / "jobs")
    (tmp_path / "new").mkdir()
    shutil.copy(tmp_path / "jobs" / "demo-data" / "items.parquet", tmp_path / "new" / "p1.parquet")
    shutil.copy(tmp_path / "jobs" / "demo-data" / "items.parquet", tmp_path / "tonight.parquet")
    examples = [shlex.split(line.split("#")[0]) for line in cli.MODEL_EXAMPLES.splitlines()
                if line.strip().startswith("pairwise-dask")]
    assert [e[1] for e in examples] == ["fit", "update", "apply"]
    for argv in examples:
        res = run_cli(*argv[1:], "--quiet", cwd=tmp_path, timeout=300)
        assert res.returncode == 0, (argv, res.stderr)
    assert (tmp_path / "labels" / "tonight" / "summary.json").exists()
