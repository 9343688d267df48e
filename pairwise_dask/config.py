"""The job file and the command-line flags, turned into one validated, frozen :class:`Settings`.

Every option is declared once in :data:`OPTIONS`: its place in the job file, its flag, its type,
default, range and one line of help. Parsing the TOML file, building the ``argparse`` flags and the
``--help`` text all read that table, so an option cannot exist in one and not the other.
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import COMMAND_LINE, BadInputError

MODES = ("bracket", "round-robin", "top-t", "score")
FINALS = ("fused", "confident-view")
FUSIONS = ("llr", "mean")
FIT_ON = ("fused", "view", "annotation")
BASE_KEEP = ("cosine", "margin")
CACHE = ("auto", "on", "off")
DECISIONS = ("cosine", "discriminant")
ROTATIONS = ("none", "pca")
WORKER_MALLOC = ("tuned", "dask")


@dataclass(frozen=True)
class Option:
    """One setting: where it lives in the job file, its flag, type, default and check."""

    name: str            # Settings field
    section: str | None  # TOML table ([method], [cluster]) or None for top level
    type: type
    default: Any
    help: str
    check: Callable[[Any], str | None] | None = None  # returns an error text or None
    path: bool = False   # resolved against the job file's folder
    flag: str | None = None

    @property
    def key(self) -> str:
        return self.name if self.section is None else f"{self.section}.{self.name}"

    @property
    def cli(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")


def _range(lo: float | None = None, hi: float | None = None) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if lo is not None and v < lo:
            return f"must be ≥ {lo}"
        if hi is not None and v > hi:
            return f"must be ≤ {hi}"
        return None
    return check


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], str | None]:
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}"


def _dims_check(v: float) -> str | None:
    # a count must be whole (2.5 dimensions is a typo, not a request to round); the upper bound
    # d is only known once the data is open, so job.prepare checks dims ≤ d
    if v <= 0:
        return "must be a whole number ≥ 1, or a fraction of d in (0, 1)"
    if v >= 1 and v != int(v):
        return "must be a whole number when ≥ 1 (or a fraction of d below 1)"
    return None


def _rotate_dims_check(v: float) -> str | None:
    return None if v == 0 else _dims_check(v)


def _memory_check(v: str) -> str | None:
    # what LocalCluster accepts: "auto", a byte count with units ("4GiB"), or a fraction of the RAM
    if v == "auto":
        return None
    try:
        float(v)
        return None
    except ValueError:
        pass
    from dask.utils import parse_bytes

    try:
        parse_bytes(v)
        return None
    except (ValueError, TypeError):
        return "is not a size such as 4GiB or 500MB, a share of the memory such as 0.4, or auto"


OPTIONS: tuple[Option, ...] = (
    Option("items", None, str, None, "items Parquet: a file, a folder or a glob", path=True),
    Option("classes", None, str, None, "classes Parquet: `name` and one embedding column per view "
           "(or one shared `embedding`)", path=True),
    Option("out", None, str, None, "output folder (labels/, disagreements/, model/, summary.json)", path=True),
    Option("id", None, str, "id", "items' id column (unique, non-null)"),
    Option("label", None, str, "", "items' existing annotation column, for accuracy and QA (optional)"),
    Option("overwrite", None, bool, False, "replace an output folder that holds a different job's run"),
    Option("dims", "method", float, 0.5, "m: dimensions per pair mask, a whole number ≤ d or a fraction "
           "of d below 1 (the article: 100)", _dims_check),
    Option("seed", "method", int, 0, "seed of the bracket's random order", _range(0, 2 ** 63 - 1)),
    Option("cos_min", "method", float, -1.0, "statistics only use items whose top cosine is at least this",
           _range(-1.0, 1.0)),
    Option("diff_min", "method", float, 0.0, "statistics only use items that beat the other class of the "
           "pair by at least this cosine", _range(0.0, 2.0)),
    Option("cos_quantile", "method", float, 0.0, "per class, also drop this lowest share of its items' top "
           "cosines from the statistics (0: off; costs one extra pass)", _range(0.0, 1.0)),
    Option("diff_quantile", "method", float, 0.0, "per class, also drop this lowest share of its items' top-1 "
           "minus top-2 margins (0: off; costs one extra pass)", _range(0.0, 1.0)),
    Option("min_items", "method", int, 5, "a pair side with fewer items falls back to prompt-difference "
           "dimensions", _range(1, None)),
    Option("mode", "method", str, "score", "how the pair decisions pick a label: bracket, round-robin, "
           "top-t or score (the best mean margin against every other class)", _one_of(MODES)),
    Option("top_t", "method", int, 16, "with mode top-t: classes (best base cosines) that enter the "
           "bracket", _range(2, None)),
    Option("final", "method", str, "fused", "final label: fused (the mode played on the views' fused "
           "pair margins, see fuse) or confident-view (the view with the larger margin)", _one_of(FINALS)),
    Option("fuse", "method", str, "llr", "how final = fused adds up the views' pair margins: llr (each "
           "view weighted, pair by pair, by how far apart the discriminant puts the pair's two classes "
           "in that view: the views' log-likelihood ratios summed) or mean (every view the same; "
           "always so for cosine decisions)", _one_of(FUSIONS)),
    Option("mix", "method", float, 1.0, "pair weights from prompt + mix × the class's mean item "
           "(0: the prompts alone, as in the article)", _range(0.0, None)),
    Option("refine", "method", int, 2, "extra rounds: re-estimate the statistics from the previous "
           "round's final labels, then play again (each round reads the items twice more; ignored with "
           "fit_on = annotation; a refined model cannot be updated)", _range(0, 20)),
    Option("keep", "method", float, 0.5, "fit_on = fused and refine: share of items, most confident "
           "first, whose labels feed the statistics", _range(0.01, 1.0)),
    Option("keep_sample", "method", int, 131072, "fit_on = fused and refine: the keep threshold (the margin "
           "quantile of the `keep` most confident items) is read from about this many items, a fixed sample by "
           "id hash (the same whatever the partitioning); only they are played in its pass; 0: every item",
           _range(0, None)),
    Option("fit_on", "method", str, "fused", "statistics from: fused (the views' summed base cosines, "
           "the `keep` most confident items), view (each view's own base labels, all items: the "
           "article), annotation (the --label column where present; for reviewing an annotation)",
           _one_of(FIT_ON)),
    Option("base_keep", "method", str, "cosine", "fit_on = fused: how the `keep` most confident items are "
           "ranked for the first statistics: cosine (the fused base label's own mean cosine: the items nearest "
           "their prompt first) or margin (its lead over the runner-up, the earlier default; a class that wins "
           "another section's items by a clear lead keeps them)", _one_of(BASE_KEEP)),
    Option("decision", "method", str, "discriminant", "pair decisions: cosine (the prompts, or prompt + mix × "
           "class mean, on the pair's mask: the article) or discriminant (a diagonal Gaussian discriminant "
           "of the pair's two item sets on its mask, from the moments, in standard-deviation units; with "
           "refine > 0 the first round stays cosine)", _one_of(DECISIONS)),
    Option("prior", "method", float, 0.0, "decision = discriminant: weight of log(n_a / n_b), the two "
           "sets' item counts, in each pair's bias (0: equal priors)", _range(0.0, 10.0)),
    Option("rotate", "method", str, "pca", "basis of the statistics: none (the embedding's own dimensions) "
           "or pca (the principal axes of the items, from one more label-free pass: cosines unchanged, "
           "per-dimension masks and moments on uncorrelated coordinates)", _one_of(ROTATIONS)),
    Option("rotate_sample", "method", int, 131072, "rotate = pca: about this many items, a fixed sample by "
           "id hash (the same whatever the partitioning), give the principal axes; 0: every item",
           _range(0, None)),
    Option("rotate_dims", "method", float, 0.0, "rotate = pca: keep only the first principal axes, a count or "
           "a fraction of d below 1 (0: all). Every later pass then works on fewer coordinates (d/2: about "
           "half the work, −0.006 final accuracy on the Debian data); base labels still use the whole vectors",
           _rotate_dims_check),
    Option("scheduler", "cluster", str, "", "address of a running Dask scheduler (tcp://host:8786); "
           "empty: start a LocalCluster"),
    Option("worker_wait", "cluster", float, 0.0, "with a scheduler that has no worker (before the run, or "
           "when every worker has left mid-run): seconds to wait for one, then give up and keep nothing (0: "
           "let the tasks wait as long as it takes, as an adaptive cluster needs: it starts workers when tasks "
           "arrive)", _range(0, None)),
    Option("workers", "cluster", int, 2, "LocalCluster worker processes", _range(1, 1024)),
    Option("threads_per_worker", "cluster", int, 1, "LocalCluster threads per worker", _range(1, 1024)),
    Option("memory_limit", "cluster", str, "auto", "LocalCluster memory limit per worker (e.g. 4GiB, or "
           "a share of the machine's memory such as 0.4; auto: the memory shared out among the workers)",
           _memory_check),
    Option("cache", "cluster", str, "auto", "keep the decoded items in the workers' memory between passes "
           "(read once instead of once per pass): auto (when they fit in a third of the workers' memory "
           "limits), on, off", _one_of(CACHE)),
    Option("partition_rows", "cluster", int, 0, "rows per partition (0: one partition per Parquet row "
           "group); a task still reads whole row groups first, so to need less memory per task write the "
           "items with smaller row groups", _range(0, None)),
    Option("worker_malloc", "cluster", str, "tuned", "glibc malloc on the workers: tuned (temporary arrays "
           "under 32 MiB are reused from the heap; Dask's default trim threshold makes every one over 128 KiB "
           "a fresh mmap, and the job up to 1.4x slower) or dask (leave the workers as Dask set them)",
           _one_of(WORKER_MALLOC)),
)
_BY_KEY = {o.key: o for o in OPTIONS}
_BY_NAME = {o.name: o for o in OPTIONS}
_SECTIONS = {o.section for o in OPTIONS if o.section} | {"views", "class_columns", "storage_options"}


#: Options added after the first release, at the value that means the method as it was before
#: them: the fingerprint leaves them out there, and an older summary.json without them had it.
BEFORE_OPTION = {"decision": "cosine", "prior": 0.0, "rotate": "none", "keep_sample": 0, "rotate_dims": 0.0,
                 "fuse": "mean", "base_keep": "margin"}


@dataclass(frozen=True)
class Settings:
    """One job's validated settings. Build it with :func:`load_settings`."""

    items: str
    classes: str
    out: str
    views: tuple[tuple[str, str], ...]  # (view name, items column), in order
    class_columns: tuple[tuple[str, str], ...] = ()  # (view name, classes column) overrides
    id: str = "id"
    label: str = ""
    overwrite: bool = False
    dims: float | None = 0.5  # None: masks.DEFAULT_DIMS, or d when smaller
    seed: int = 0
    cos_min: float = -1.0
    diff_min: float = 0.0
    cos_quantile: float = 0.0
    diff_quantile: float = 0.0
    min_items: int = 5
    mode: str = "score"
    top_t: int = 16
    final: str = "fused"
    fuse: str = "llr"
    mix: float = 1.0
    refine: int = 2
    keep: float = 0.5
    keep_sample: int = 131072
    fit_on: str = "fused"
    base_keep: str = "cosine"
    decision: str = "discriminant"
    prior: float = 0.0
    rotate: str = "pca"
    rotate_sample: int = 131072
    rotate_dims: float = 0.0
    scheduler: str = ""
    worker_wait: float = 0.0
    workers: int = 2
    threads_per_worker: int = 1
    memory_limit: str = "auto"
    cache: str = "auto"
    partition_rows: int = 0
    worker_malloc: str = "tuned"
    job_file: str = ""
    #: fsspec options for URL inputs/outputs (``[storage_options]``); never written to outputs
    storage_options: dict = field(default_factory=dict, compare=False, repr=False)
    #: the options set on the command line (flags, or ``load_settings``' overrides): an error
    #: about one of them names the command line, not the job file (:meth:`where`)
    flags: frozenset = field(default=frozenset(), compare=False, repr=False)

    @property
    def view_names(self) -> list[str]:
        return [v for v, _ in self.views]

    @property
    def per_pair_sets(self) -> bool:
        """Pair sides depend on the pair only when a diff filter is on (METHOD.md §2)."""
        return self.diff_min > 0 or self.diff_quantile > 0

    def where(self, name: str) -> str:
        """Where option ``name`` was set, for an error about its value: the command line or the job file."""
        return COMMAND_LINE if name in self.flags or not self.job_file else self.job_file

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)

    def fingerprint(self) -> str:
        """Identity of the job (what it reads and how it labels), not of where or how it runs."""
        keep = {k: v for k, v in dataclasses.asdict(self).items()
                if k not in {"out", "overwrite", "scheduler", "worker_wait", "workers", "threads_per_worker",
                             "memory_limit", "cache", "partition_rows", "worker_malloc", "job_file",
                             "storage_options", "flags"}}
        # options added later: left out at the values that mean "the method before they existed",
        # so a job that spells those out keeps the fingerprint (and the outputs) it had
        for name in ("decision", "prior", "rotate", "keep_sample", "fuse"):
            if keep.get(name) == BEFORE_OPTION[name]:
                keep.pop(name)
        if "rotate" not in keep:  # the sample and the axes kept only matter to a rotation
            keep.pop("rotate_sample")
            keep.pop("rotate_dims")
        elif keep.get("rotate_dims") == 0.0:  # all axes: the rotation as it was before the option
            keep.pop("rotate_dims")
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def parse_views(text: str, *, where: str = "--views") -> tuple[tuple[str, str], ...]:
    """``NAME=COLUMN[,NAME=COLUMN…]`` (a bare ``COLUMN`` names the view after the column)."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, col = part.partition("=")
        col = (col or name).strip()
        if "=" in col or any(ch.isspace() for ch in col):
            # 'image=img_emb text=txt_emb': spaces where commas go (else "column … is missing")
            fixed = ",".join(p.strip() for p in text.replace(",", " ").split())
            raise BadInputError(f"{where} {text!r}: column {col!r} holds " + ("'='" if "=" in col else "a space"),
                                file=COMMAND_LINE, hint=f"Separate the views with commas: {where} {fixed} (a "
                                "column whose name has spaces goes in the job file's [views] table)")
        out.append((name.strip(), col))
    return tuple(out)


def _coerce(opt: Option, value: Any, where: str) -> Any:
    t = opt.type
    ok = (isinstance(value, bool) if t is bool else
          isinstance(value, (int, float)) and not isinstance(value, bool) if t is float else
          isinstance(value, int) and not isinstance(value, bool) if t is int else
          isinstance(value, str))
    if not ok:
        raise BadInputError(f"{opt.key} = {value!r} is not {t.__name__}", file=where,
                            hint=f"{opt.key}: {opt.help}")
    value = t(value)
    if opt.check and (err := opt.check(value)):
        raise BadInputError(f"{opt.key} = {value!r} {err}", file=where, hint=f"{opt.key}: {opt.help}")
    return value


def _unknown(key: str, known: list[str], where: str) -> BadInputError:
    near = difflib.get_close_matches(key, known, n=1)
    hint = f"Did you mean {near[0]!r}?" if near else f"Known keys: {', '.join(sorted(known))}"
    return BadInputError(f"unknown key {key!r}", file=where, hint=hint)


#: how to call the commands that take a model folder (a swapped pair of arguments is a common slip)
MODEL_USAGE = "pairwise-dask apply MODEL [JOB] --items … --views … --out … (update likewise)"


def _job_text(path: Path) -> str:
    """The job file's text; anything that is not a TOML job file (a folder, a Parquet file a glob
    spilled into the job's place, binary or UTF-16 text) is a :class:`BadInputError` saying what it is."""
    if path.is_dir():
        if (path / "params.json").exists():
            raise BadInputError("is a saved model's folder, not a job file", file=str(path),
                                hint=f"apply and update take the model folder first, then the job file: {MODEL_USAGE}")
        has_parquet = any(p.suffix in (".parquet", ".parq", ".pq") for p in path.iterdir())
        raise BadInputError("is a folder, not a job file", file=str(path),
                            hint=f"To read its Parquet files pass --items {path}" if has_parquet else
                            "Give a TOML job file (see jobs/demo.toml), or no job file and the flags "
                            "--items, --classes, --views and --out")
    data = path.read_bytes()
    if data[:4] == b"PAR1":  # Parquet's magic: an items file given as the job (or an unquoted glob)
        raise BadInputError("is a Parquet file, not a TOML job file", file=str(path),
                            hint=f"Pass Parquet items with --items {path}; quote a glob (--items 'folder/*.parquet') "
                                 "or the shell expands it and its second file lands here")
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise BadInputError("is UTF-16 text; a TOML job file is UTF-8", file=str(path),
                            hint="Save the job file as UTF-8 (e.g. iconv -f UTF-16 -t UTF-8)")
    try:
        return data.decode("utf-8-sig")  # (a byte order mark, which some editors write, is let through)
    except UnicodeDecodeError as e:
        raise BadInputError(f"is not a TOML job file (not UTF-8 text: byte {e.start} is 0x{data[e.start]:02x})",
                            file=str(path), hint="Give the job's TOML file (see jobs/demo.toml), saved as UTF-8") from None


def read_job_file(path: str | os.PathLike) -> dict[str, Any]:
    """The job file's values as ``{option key: value}``; paths resolved against its folder."""
    path = Path(path)
    try:
        doc = tomllib.loads(_job_text(path))
    except FileNotFoundError:
        raise BadInputError("job file not found", file=str(path), hint="Check the path") from None
    except PermissionError:
        raise BadInputError("cannot be read (permission denied)", file=str(path),
                            hint="Make the job file readable, or run as a user who may read it") from None
    except tomllib.TOMLDecodeError as e:
        raise BadInputError(f"is not valid TOML ({e})", file=str(path),
                            hint="Fix the job file at that line (each key and each [table] may appear once)") from None
    base = path.resolve().parent
    values: dict[str, Any] = {}
    known = [o.key for o in OPTIONS] + ["views", "class_columns"]
    for key, value in doc.items():
        if isinstance(value, dict):
            if key not in _SECTIONS:
                raise _unknown(key, sorted(_SECTIONS), str(path))
            if key == "storage_options":  # passed as is to fsspec (credentials, endpoints, ...)
                values[key] = dict(value)
                continue
            if key in ("views", "class_columns"):
                for v, col in value.items():
                    if not isinstance(col, str):
                        raise BadInputError(f"{key}.{v} = {col!r} is not a column name", file=str(path),
                                            hint=f"Write it as {v} = \"column_name\"")
                values[key] = tuple((str(v), col) for v, col in value.items())
                continue
            for sub, v in value.items():
                full = f"{key}.{sub}"
                if full not in _BY_KEY:
                    raise _unknown(full, known, str(path))
                values[full] = v
        else:
            if key not in _BY_KEY:
                raise _unknown(key, known, str(path))
            values[key] = value
    for k, v in list(values.items()):
        opt = _BY_KEY.get(k)
        if opt is not None:
            v = _coerce(opt, v, str(path))
            if opt.path and v and "://" not in v:
                v = os.path.normpath(str(base / v)) if not os.path.isabs(v) else v
            values[k] = v
    values["job_file"] = str(path.resolve())
    return values


def _model_views(classes: str, storage_options: dict | None) -> str:
    """``--views`` for the saved model whose ``classes.parquet`` ``classes`` is (apply and update
    take their classes from the model), as ``a=emb_a,b=emb_b``: the model's view names, with the
    columns its run read when the run's ``summary.json`` is beside the model (or
    ``PairwiseLabeler.save`` recorded them in ``params.json``); "" for a classes
    file that is no model's. Error path only."""
    from .storage import Location

    try:
        model = Location.of(classes, storage_options).parent
        if not (model / "params.json").exists():
            return ""
        params = json.loads((model / "params.json").read_text())
        names = [str(v) for v in params.get("views") or []]
        columns: dict = params.get("views_columns") or {}  # PairwiseLabeler.save records them
        with contextlib.suppress(Exception):  # the run's summary names the columns it read
            columns = columns or json.loads((model.parent / "summary.json").read_text()).get("views") or {}
        return ",".join(f"{v}={columns.get(v, 'COLUMN')}" for v in names)
    except Exception:  # noqa: BLE001 - only a hint: a model that cannot be read is refused elsewhere
        return ""


def check_views(views: "tuple[tuple[str, str], ...] | list", *, label: str, fit_on: str, where: str | None,
                label_hint: str = "Pass --label COLUMN (or set `label = ...`)") -> None:
    """The views (names that make output columns, each reading its own column) and that
    ``fit_on = annotation`` has an annotation column: the job's settings and ``PairwiseLabeler``
    (which checks ``fit_on`` when it fits: a loaded model is used without its annotation)."""
    names = [v for v, _ in views]
    for v in names:
        if names.count(v) > 1:
            raise BadInputError(f"view {v!r} is named twice", file=where, hint="Give each view its own name")
        if not isinstance(v, str) or not v or not v.replace("_", "").isalnum():
            raise BadInputError(f"view name {v!r} is not a plain identifier", file=where,
                                hint="Use letters, digits and _ (it names output columns)")
    cols = [c for _, c in views]
    for c in cols:
        if cols.count(c) > 1:
            raise BadInputError(f"column {c!r} is used by two views", file=where,
                                hint="Each view reads its own embedding column")
    if fit_on == "annotation" and not label:
        raise BadInputError("fit_on = annotation needs the annotation column", file=where,
                            hint=f"{label_hint}, or use fit_on = fused (the default) or view")


def build_settings(values: dict[str, Any], *, where: str = "settings") -> Settings:
    """Validate merged values (job file, then flags) into :class:`Settings`."""
    kw: dict[str, Any] = {}
    for opt in OPTIONS:
        v = values.get(opt.key, values.get(opt.name))
        if v is None:
            v = opt.default
        else:
            v = _coerce(opt, v, where)
        kw[opt.name] = v
    for required in ("items", "classes", "out"):
        if not kw[required]:
            raise BadInputError(f"no {required} given", file=where,
                                hint=f"Set `{required} = ...` in the job file or pass --{required}")
    views = values.get("views") or ()
    if not views:
        model = _model_views(kw["classes"], values.get("storage_options"))
        raise BadInputError("no views given", file=where, hint=f"Pass the model's views: --views {model} (or a [views] "
                            "table in the job file)" if model else "Add a [views] table (name = \"column\") or pass "
                            "--views a=emb_a,b=emb_b")
    check_views(views, label=kw["label"], fit_on=kw["fit_on"], where=where)
    names = [v for v, _ in views]
    class_columns = tuple(values.get("class_columns") or ())
    for v, _ in class_columns:
        if v not in names:
            raise BadInputError(f"class_columns names view {v!r}, which is not among the views "
                                f"({', '.join(names)})", file=where,
                                hint="Each [class_columns] key is a view name of [views]")
    so = values.get("storage_options") or {}
    if not isinstance(so, dict):
        raise BadInputError(f"storage_options = {so!r} is not a table of options", file=where,
                            hint='e.g. [storage_options] anon = true, or --storage-options \'{"anon": true}\'')
    return Settings(views=tuple(views), class_columns=class_columns, job_file=values.get("job_file", ""),
                    storage_options=dict(so), flags=frozenset(values.get("_flags", ())), **kw)


def load_settings(job_file: str | None = None, overrides: dict[str, Any] | None = None, *,
                  defaults: dict[str, Any] | None = None) -> Settings:
    """Settings from an optional job file, with ``overrides`` (flag values) taking precedence.

    ``defaults`` (option key -> value, e.g. a saved model's method: :func:`model_method`) replace
    the options' own defaults; the job file and the flags still take precedence over them.
    """
    values: dict[str, Any] = dict(defaults or {})
    values.update(read_job_file(job_file) if job_file else {})
    flags = set()
    for k, v in _flat_overrides(overrides or {}):
        if v is None:
            continue
        opt = _BY_NAME.get(k)
        if opt is not None:  # a flag's bad value is the command line's, not the job file's
            v = _coerce(opt, v, COMMAND_LINE)
            if opt.path and v and "://" not in v:  # as the command line's: from where the caller runs,
                v = os.path.abspath(v)              # recorded whole (summary.json, the fingerprint)
            flags.add(opt.name)
        elif k in ("views", "class_columns") and isinstance(v, dict):  # as a job file's table
            v = tuple((str(name), col) for name, col in v.items())
        elif k in ("views", "class_columns") and isinstance(v, str):  # as --views a=emb_a,b=emb_b
            v = parse_views(v, where=f"--{k.replace('_', '-')}")
        values[opt.key if opt is not None else k] = v
    values["_flags"] = flags
    return build_settings(values, where=job_file or COMMAND_LINE)


#: override keys that are not options: tables a job file also has
_TABLES = ("views", "class_columns", "storage_options")


def _flat_overrides(overrides: dict[str, Any]) -> list[tuple[str, Any]]:
    """``load_settings``' overrides as (option name, value): a section written as a job file's
    table (``{"method": {"dims": 10}}``) is flattened, and an unknown key is refused, as in a job
    file (a typo would otherwise leave the option at its default without a word)."""
    out = []
    for k, v in overrides.items():
        if k in _BY_NAME or k in _TABLES:
            out.append((k, v))
        elif k in _SECTIONS and isinstance(v, dict):
            for name, value in v.items():
                if _BY_NAME.get(name) is None or _BY_NAME[name].section != k:
                    raise _unknown(f"{k}.{name}", [o.key for o in OPTIONS], COMMAND_LINE)
                out.append((name, value))
        else:
            raise _unknown(k, [o.name for o in OPTIONS] + list(_TABLES), COMMAND_LINE)
    return out


def model_method(params: dict) -> dict[str, Any]:
    """The ``[method]`` options a saved model was fitted with (its ``params.json``), by option key.

    An option the model does not record (saved before the option existed) had the value that
    means the method as it was then (:data:`BEFORE_OPTION`); one without such a value is left out.
    """
    out = {}
    for o in OPTIONS:
        if o.section != "method":
            continue
        v = params.get(o.name, BEFORE_OPTION.get(o.name))
        if v is not None:
            out[o.key] = v
    return out


#: Per command, the ``[method]`` options that may differ from a saved model's: ``apply`` plays its
#: own tourney on the model's masks (every other option is built into them); ``update`` fits new
#: masks as the model's were fitted, so only the labelling options are free.
FREE_OF_MODEL = {"apply": frozenset({"seed", "mode", "top_t", "final", "fuse"}),
                 "update": frozenset({"seed", "final", "fuse"})}


def _fixed_by_model(params: dict, command: str) -> dict[str, Any]:
    """Option name -> the model's value, for every option the model fixes for ``command``."""
    return {k.split(".", 1)[1]: v for k, v in model_method(params).items()
            if k.split(".", 1)[1] not in FREE_OF_MODEL[command]}


def model_differences(s: Any, params: dict, command: str) -> list[str]:
    """Everything ``s`` asks that the saved model (its ``params.json``) cannot honour for
    ``command``: views it lacks, (``update``) views of it left out, and ``"dims = 10 (the model:
    0.5)"`` for each option it fixes that ``s`` sets otherwise. ``s``: Settings, or anything with
    their option attributes and ``view_names`` (the estimator's arguments)."""
    def show(x: Any) -> str:
        return f"{x:g}" if isinstance(x, float) else repr(x)

    out, views = [], list(params.get("views") or [])
    missing = [v for v in s.view_names if views and v not in views]
    if missing:
        out.append(f"the model has no view(s) {', '.join(missing)} (it has {', '.join(views)})")
    dropped = [v for v in views if command == "update" and v not in s.view_names]
    if dropped:  # the new model would silently lose these views' moments
        out.append(f"the model's view(s) {', '.join(dropped)} are not among --views ({', '.join(s.view_names)}): "
                   "update adds the new items' moments to every view of the model")
    return out + [f"{name} = {show(getattr(s, name))} (the model: {show(v)})"
                  for name, v in _fixed_by_model(params, command).items() if getattr(s, name) != v]


def refined_model(params: dict) -> bool:
    """The model's moments are of refined labels (``refine > 0``, not fitted on the annotation):
    new items' base-label moments do not add to them."""
    return bool(params.get("refine_thresholds")) or (
        int(params.get("refine", 0)) > 0 and params.get("fit_on", "view") != "annotation")


def check_model_method(s: Any, params: dict, command: str, *, caller: str = "") -> None:
    """Refuse what ``command`` cannot do with the model: update a refined model, or use views and
    options other than the model's (every difference named at once). ``s``: Settings, or anything
    with their option attributes and ``view_names``; ``caller``: the API method asking (its
    messages then speak of its arguments, not of flags)."""
    if command == "update" and refined_model(params):
        raise BadInputError("refine > 0 cannot be updated: its moments are of the refined labels, which new "
                            "items' base-label moments do not add to",
                            hint="Fit again on all items, or use refine = 0 for models you update")
    diffs = model_differences(s, params, command)
    if diffs:
        hint = (f"{command} uses the model's views and method: give the model's views (--views), drop the "
                "options named from the flags and the job file (the model's values are then used), or fit a "
                "new model") if not caller else \
            "Give the model's views and options to PairwiseLabeler.load (or fit() again on all items)"
        raise BadInputError(f"{caller or command} cannot use the model as asked: " + "; ".join(diffs), hint=hint)


def with_model_method(s: Settings, params: dict, command: str) -> Settings:
    """``s`` with the options the model fixes for ``command`` set to the model's values."""
    return s.replace(**{name: _coerce(_BY_NAME[name], v, "the model's params.json")
                        for name, v in _fixed_by_model(params, command).items()})
