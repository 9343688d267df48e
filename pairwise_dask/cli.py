"""``pairwise-dask``: the command line. Parses flags, shows progress, prints the end summary."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from typing import Any, Sequence

if "--multiprocessing-fork" in sys.orig_argv:
    # This process is a worker of the LocalCluster the command started: multiprocessing's spawn
    # imports the command's main module, hence this one, before anything else. A terminal's Ctrl-C
    # goes to the whole process group; it is the command's to act on (it closes its workers), and a
    # worker it reached in its imports printed a traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

from .config import OPTIONS, Settings, check_model_method, load_settings, model_method, parse_views, read_job_file
from .errors import COMMAND_LINE, BadInputError, NoWorkersError, Notice
from .words import count

EXAMPLES = """\
examples:
  pairwise-dask run jobs/demo.toml                       # the demo job (paths relative to the file)
  pairwise-dask run jobs/demo.toml --out /tmp/demo --workers 1 --seed 3
  pairwise-dask run --items items.parquet --classes classes.parquet \\
      --views image=img_emb,text=txt_emb --label label --out out/
  pairwise-dask run job.toml --scheduler tcp://10.0.0.5:8786   # on a running Dask cluster

Outputs under OUT: labels/ (one row per item), disagreements/ (the review list, most certain
errors first), model/ (pair masks and moments), summary.json, and report.html (one page: figures,
the top of the review list). The folder holds a complete result exactly when summary.json is
there; outputs are staged and renamed into place only at the end.
"""


#: What each command writes under --out (its flag's help).
OUT_HELP = {"run": "output folder: labels/, disagreements/, model/, summary.json, report.html",
            "fit": "output folder: model/ (moments, masks, classes, params.json), summary.json, report.html",
            "update": "output folder of the updated model: model/, summary.json, report.html",
            "apply": "output folder: labels/, disagreements/, summary.json, report.html"}
#: The [method] group's title per command: apply and update take the saved model's method.
METHOD_TITLE = {
    "apply": "method: the model's; only seed, mode, top_t, final and fuse may be set otherwise "
             "(the others are built into its masks)",
    "update": "method: the model's; only seed, final and fuse may be set otherwise (the new masks "
              "are fitted as the model's were)"}


def _json_object(text: str) -> dict:
    """``--storage-options``: a JSON object, or a usage error that says so."""
    try:
        value = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e}); e.g. '{{\"anon\": true}}'") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"anon\": true}'")
    return value


def _add_run_flags(p: argparse.ArgumentParser, command: str = "run") -> None:
    p.add_argument("job", nargs="?", help="job file (TOML); flags override its values")
    p.add_argument("--views", metavar="NAME=COLUMN[,…]",
                   help="embedding column of each view, comma-separated, e.g. image=img_emb,text=txt_emb; a bare "
                        "COLUMN is a view named after its column (--views img_emb,txt_emb)")
    if command in ("run", "fit"):  # apply and update read the model's classes, named by view
        p.add_argument("--class-columns", metavar="VIEW=COLUMN[,…]",
                       help="the classes file's embedding column of a view, when it is named neither like the "
                            "view nor like the items' column nor `embedding` ([class_columns] in the job file)")
    p.add_argument("--storage-options", metavar="JSON", type=_json_object,
                   help='fsspec options for URL paths (s3://, gs://, abfs://, memory://), e.g. \'{"anon": true}\'')
    groups = {None: p.add_argument_group("data and outputs"),
              "method": p.add_argument_group(METHOD_TITLE.get(command, "method ([method] in the job file)")),
              "cluster": p.add_argument_group("cluster ([cluster] in the job file)")}
    for o in OPTIONS:
        g = groups[o.section]
        default = "" if o.default in (None, "") else f" (default: {o.default})"
        if command in ("apply", "update") and o.section == "method":
            default = " (default: the model's)"  # its method is the default of every method option
        if o.name == "out" or (o.name == "classes" and command in ("apply", "update")):
            g.add_argument(o.cli, dest=o.name, type=o.type, metavar=o.name.upper(), help=OUT_HELP[command]
                           if o.name == "out" else "not for this command: the model's own classes are used")
            continue
        if o.type is bool:
            g.add_argument(o.cli, action="store_true", default=None, help=o.help)
        else:
            g.add_argument(o.cli, dest=o.name, type=o.type, metavar=o.name.upper().replace("_", "-"),
                           help=o.help + default)
    out = p.add_argument_group("console")
    out.add_argument("--quiet", action="store_true", help="print nothing but errors (for scheduled runs)")
    out.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")


def _overrides(ns: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for o in OPTIONS:
        v = getattr(ns, o.name, None)
        if v is None:
            continue
        if o.path and isinstance(v, str) and v and "://" not in v:
            v = os.path.abspath(v)  # flags are relative to where the command runs
        values[o.name] = v
    if ns.views:
        values["views"] = parse_views(ns.views)
    if getattr(ns, "class_columns", None):
        values["class_columns"] = parse_views(ns.class_columns, where="--class-columns")
    if ns.storage_options is not None:
        values["storage_options"] = ns.storage_options
    return values


COMMANDS = {
    "run": ("run a job end to end (statistics, tourney, outputs)",
            "Run a job: read items and classes, fit the pair masks from partition-wise moments, label "
            "every item with the tourney, write labels/, disagreements/, model/, summary.json and report.html."),
    "fit": ("statistics only: write OUT/model/ (pair masks + moments), no labels",
            "Fit a model: the statistics passes over the items (as `run` makes them: one, plus the "
            "rotation's and two per refine round with the defaults), no labels; writes OUT/model/ for "
            "`apply` and `update`, summary.json and report.html."),
    "apply": ("label items with a saved model (tourney pass only)",
              "Label new items with a saved model/ folder: no statistics pass. Classes come from the model. "
              "Writes labels/, disagreements/, summary.json and report.html."),
    "update": ("add new items' moments to a saved model and recompute its masks",
               "Update a model with new items: their moments are added to the saved ones exactly (moments "
               "add), the masks recomputed; the old items are not read again. Writes OUT/model/."),
}
MODEL_EXAMPLES = """\
examples:
  # a model to update is fitted without refine rounds, as jobs/nightly.toml does
  pairwise-dask fit jobs/demo.toml --out models/v1 --refine 0 --fit-on view --rotate none
  pairwise-dask update models/v1/model --items 'new/*.parquet' --views a=emb_a,b=emb_b --out models/v2
  pairwise-dask apply models/v2/model --items tonight.parquet --views a=emb_a,b=emb_b --out labels/tonight
"""


def _top_examples() -> str:
    """The top-level --help's one examples block: run's, then the model commands', then run's
    note on the outputs (each list has its own \"examples:\" heading in its command's --help)."""
    run_lines, _, outputs = EXAMPLES.partition("\n\n")
    model_lines = MODEL_EXAMPLES.split("\n", 1)[1]  # without its heading
    return run_lines + "\n" + model_lines + "\n" + outputs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pairwise-dask", description=(
        "Relabel a catalog from precomputed embeddings: pairwise cross-variance masks and a seeded "
        "knockout tourney over the classes, run on Dask. Reports the items whose labels look wrong."),
        epilog=_top_examples(), formatter_class=argparse.RawDescriptionHelpFormatter)
    from . import __version__
    p.add_argument("--version", action="version", version=f"pairwise-dask {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, (short, long) in COMMANDS.items():
        cmd = sub.add_parser(name, help=short, description=long,
                             epilog=EXAMPLES if name == "run" else MODEL_EXAMPLES,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        if name in ("apply", "update"):
            cmd.add_argument("model", help="a saved model/ folder (from run, fit or update)")
        _add_run_flags(cmd, name)
    from . import prompts  # light: the model is imported only when the command runs

    prompts.configure_parser(sub.add_parser("classes", help=prompts.HELP, description=prompts.DESCRIPTION,
                                            epilog=prompts.EXAMPLES,
                                            formatter_class=argparse.RawDescriptionHelpFormatter))
    from . import pack

    pack.configure_parser(sub.add_parser("pack", help=pack.HELP, description=pack.DESCRIPTION, epilog=pack.EXAMPLES,
                                         formatter_class=argparse.RawDescriptionHelpFormatter))
    return p


def format_summary(s: dict) -> str:
    """The one-screen summary printed at the end of a command."""
    views = list(s.get("per_view", {}))
    lines = [f"pairwise-dask {s.get('command', 'run')}: done in {s['timings_s']['total']:.1f} s (run {s['run_id']})"]
    it = s["items"]
    lines.append(f"  read       {count(it['rows'], 'item')} in {count(it['partitions'], 'partition')}, "
                 f"{count(len(s['classes']['names']), 'class', 'classes')}, views "
                 f"{', '.join(f'{v}={c}' for v, c in s['views'].items())}; {count(s['cluster']['workers'], 'worker')}")
    if "labelled_items" in s:
        ch = "  ".join(f"{v}: {s['per_view'][v]['changed']:,} ({s['per_view'][v]['changed'] / max(it['rows'], 1):.1%})"
                       for v in views)
        lines.append(f"  changed    {ch}  (tourney label ≠ base label)")
        for pair, a in s["agreement_weighted_f1"].items():
            lines.append(f"  agreement  {pair}: base {a['base']:.3f} → tourney {a['tourney']:.3f} (weighted F1)")
        if "final" in s and not s["final"].get("annotated_items", 1):
            lines.append("  accuracy   none: no item has an annotation (the label column is null in every row)")
        elif "final" in s:
            acc = "  ".join(f"{v}: {s['per_view'][v]['accuracy_base']:.3f} → {s['per_view'][v]['accuracy_tourney']:.3f}"
                            for v in views)
            n, rows = s["final"].get("annotated_items", it["rows"]), s["labelled_items"]
            over = "" if n == rows else f" of {n:,} annotated items"
            if s.get("method", {}).get("fit_on") == "annotation":  # a QA run: not a held-out figure
                over += "; in-sample: the statistics were fitted on it"
            lines.append(f"  accuracy   {acc}   final: {s['final']['accuracy']:.3f}  (against the annotation{over})")
        d = s["disagreements"]
        parts = ", ".join(f"{k} {v:,}" for k, v in d.items() if k != "rows")
        lines.append(f"  review     {d['rows']:,} rows in disagreements/" + (f" ({parts})" if parts else ""))
    if "model_items" in s:
        lines.append(f"  model      statistics of {s['model_items']:,} items")
    total_pairs = sum(pv["pairs"] for pv in s["per_view"].values())
    lines.append(f"  fallback   {s['fallback_pairs']} of {total_pairs:,} pair masks ({count(len(s['per_view']), 'view')}) "
                 "had too few items")
    steps = " · ".join(f"{k} {v:.1f} s" for k, v in s["timings_s"].items() if k != "total")
    lines.append(f"  steps      {steps}")
    outs = "labels/, disagreements/, model/" if s.get("command") == "run" else (
        "labels/, disagreements/" if s.get("command") == "apply" else "model/")
    lines.append(f"  outputs    {s['out']}: {outs}, summary.json"
                 + (", report.html" if s.get("report") == "report.html" else f"  (report {s.get('report')})"))
    return "\n".join(lines)


class Terminated(KeyboardInterrupt):
    """SIGTERM (``timeout``, a scheduler's walltime, a pod's deletion), raised where the run is so
    that it unwinds like Ctrl-C: the staged outputs are removed and the cluster is closed."""


def _on_sigterm(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one is enough: let the clean-up finish
    raise Terminated()


def killed_worker_message(e: Exception, s: Settings | None = None) -> str:
    """What Dask's ``KilledWorker`` means for this job, and what to change."""
    tries = getattr(e, "allowed_failures", 2) + 1
    cache = ("; or let the job stream the items rather than keep them in the workers' memory (--cache auto, "
             "or off)") if s is not None and s.cache == "on" else ""
    return (f"Dask workers died {tries} times while running the same task ({getattr(e, 'task', '?')}); "
            "the output folder was left as it was. This is nearly always a worker running out of memory (its "
            "log says 'exceeded 95% memory budget'). Give each worker more memory: --memory-limit with "
            "the LocalCluster (fewer --workers leave each more), or `dask worker --memory-limit` on your own "
            "cluster" + cache + ". A task reads one Parquet row group of the items whole (--partition-rows "
            "splits only after the read): items written with smaller row groups (pyarrow's row_group_size) "
            "need less memory per task")


def lost_scheduler_message(e: Exception) -> str | None:
    """One line for a run whose scheduler went away mid-run (its futures cancelled for
    ``scheduler-connection-lost``, or the connection closed); ``None`` for any other error."""
    from distributed.client import FutureCancelledError
    from distributed.comm.core import CommClosedError

    lost = isinstance(e, CommClosedError) or (
        isinstance(e, FutureCancelledError) and "scheduler-connection-lost" in str(e))
    if not lost:
        return None
    return ("the connection to the Dask scheduler was lost during the run (the scheduler stopped, was "
            "restarted or is unreachable); the output folder was left as it was. Check the scheduler's log, "
            "then run the same command again (a run starts over; nothing partial was kept)")


def _file_error(e: Exception) -> bool:
    """An OSError of a file operation (an errno of its own), not of Dask's network (its comm errors
    and timeouts are OSErrors too)."""
    return isinstance(e, OSError) and e.errno is not None and not isinstance(e, (ConnectionError, TimeoutError))


def os_error_message(e: OSError) -> str:
    """One line for a file operation the system refused mid-run (a full disk, a quota, permissions
    changed under the run, a vanished mount)."""
    what = e.strerror or str(e)
    where = f": {e.filename}" if e.filename else ""
    done = getattr(e, "published", None)
    return (f"the system refused a file operation during the run ({what}{where}); "
            + (f"the run had finished: {done} holds its complete output" if done else
               "the output folder was left as it was. Free space or fix the permissions, then run the same "
               "command again"))


def main(argv: Sequence[str] | None = None, *, exiting: bool = False) -> int:
    """Run one command line; returns the exit code. ``exiting``: the process ends when this returns
    (the console script), so a Ctrl-C once the command has succeeded is ignored: the outputs are
    complete, and the interpreter's last half second of shutdown would otherwise die on it with no
    message and a signal's exit status."""
    from .interrupts import held

    with held():  # it imports pyarrow: a Ctrl-C inside a compiled module's import breaks it
        parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.command is None:
        parser.print_help()
        return 2
    if ns.command == "classes":
        from .prompts import run_command

        return run_command(ns)
    if ns.command == "pack":
        from .pack import run_command as run_pack

        return run_pack(ns)
    quiet = ns.quiet or ns.json
    settings: Settings | None = None
    bars = not quiet and sys.stdout.isatty()  # progress bars redraw a line: not for logs and pipes

    def echo(m: str) -> None:
        notice = isinstance(m, Notice)  # no worker: a scheduled (--quiet) run's log must show it too
        if quiet and not notice:
            return
        # a message from another thread (the worker watch) can come while a bar is drawn: own line
        side = bars and threading.current_thread() is not threading.main_thread()
        try:
            print(("\n" if side else "") + m, file=sys.stderr if notice else sys.stdout, flush=True)
        except BrokenPipeError:
            _close_stdout()
            if threading.current_thread() is threading.main_thread():
                raise  # stops the run (main's handler says so); another thread's message is just lost
    try:
        with held():  # Dask, pandas, pyarrow first: a Ctrl-C inside a compiled module's import breaks it
            from . import job
        overrides = _overrides(ns)
        model = getattr(ns, "model", None)
        if model and "://" not in model:
            model = os.path.abspath(model)
        defaults = None
        if model:
            # apply and update label and fit as the model was fitted: its method is the default,
            # and its classes the only classes (job.py names any option set otherwise)
            if overrides.get("classes"):
                raise BadInputError(f"{ns.command} takes the classes from the model ({model}/classes.parquet)",
                                    file=COMMAND_LINE, hint="Drop --classes (a job file's `classes` is ignored here)")
            overrides["classes"] = model.rstrip("/") + "/classes.parquet"
            from .model import read_params

            so = overrides.get("storage_options") or (read_job_file(ns.job).get("storage_options") if ns.job else None)
            params = read_params(model, so)
            defaults = model_method(params)
        settings = load_settings(ns.job, overrides, defaults=defaults)
        if model:  # what still differs from the model was asked for (job file or flags): refuse it
            check_model_method(settings, params, ns.command)
        # signal handlers can only be set in the main thread (main() may be called from another)
        previous = signal.signal(signal.SIGTERM, _on_sigterm) \
            if threading.current_thread() is threading.main_thread() else None
        try:
            if ns.command == "run":
                summary = job.run(settings, progress=bars, echo=echo)
            elif ns.command == "fit":
                summary = job.fit(settings, progress=bars, echo=echo)
            elif ns.command == "update":
                summary = job.fit(settings, progress=bars, echo=echo, base_model=model)
            else:
                summary = job.apply(settings, model, progress=bars, echo=echo)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
    except BadInputError as e:
        print(f"pairwise-dask: error: {e}", file=sys.stderr)
        return 2
    except NoWorkersError as e:
        print(f"pairwise-dask: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # stdout's reader ended mid-run (`| head`): stop, as a writer does on SIGPIPE
        return _stdout_closed(None)
    except Exception as e:
        from distributed.scheduler import KilledWorker  # imported by then: the job runs on distributed

        message = killed_worker_message(e, settings) if isinstance(e, KilledWorker) else \
            lost_scheduler_message(e) or (os_error_message(e) if _file_error(e) else None)
        if message is None:
            raise
        print(f"pairwise-dask: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (Terminated)
        what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        done = getattr(e, "published", None)
        print(f"pairwise-dask: {what}" + (f" as the run finished: {done} holds its complete output" if done
                                          else "; the output folder was left as it was"), file=sys.stderr)
        return 128 + signal.SIGTERM if isinstance(e, Terminated) else 130
    if exiting and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        if ns.json:
            from .io import json_text

            print(json_text(summary), flush=True)
        elif not quiet:
            print(format_summary(summary), flush=True)
    except BrokenPipeError:
        return _stdout_closed(settings.out)
    return 0


def _close_stdout() -> None:
    """Point stdout at /dev/null once its reader is gone: what is left to print (and the flush at
    exit) would fail again."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    except (OSError, ValueError):  # no file descriptor behind sys.stdout (an embedding program's)
        pass


def _stdout_closed(out: str | None) -> int:
    """A run whose standard output was closed by its reader (``pairwise-dask run … | head``) ends
    as a writer killed by SIGPIPE does (status 141), with one line on stderr instead of a
    ``BrokenPipeError`` traceback; ``out``: the run had finished and published there."""
    _close_stdout()
    print("pairwise-dask: standard output was closed by its reader" +
          (f"; the run had finished: {out} holds its complete output" if out
           else "; stopped: the output folder was left as it was"), file=sys.stderr)
    return 128 + signal.SIGPIPE


def entry() -> None:
    """The ``pairwise-dask`` console script."""
    try:
        code: int = main(exiting=True)
    except KeyboardInterrupt:  # before a command started (main's own handler names the folder)
        print("pairwise-dask: interrupted", file=sys.stderr)
        code = 130
    except SystemExit as e:  # argparse: --help (0), a bad flag (2)
        code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
        if not isinstance(e.code, (int, type(None))):
            print(e.code, file=sys.stderr)
    except BaseException:  # a defect: its traceback, as the interpreter would print it
        sys.excepthook(*sys.exc_info())
        code = 1
    leave(code)


def leave(code: int) -> None:
    """End the process without the interpreter's teardown. pyarrow's native thread pools can be
    destroyed there while one of their threads is still joinable: ``terminate called without an
    active exception`` and SIGABRT after the command had finished (apache/arrow#34314). Under load
    that was 32 of 240 runs of a command that read a damaged model file, its error line printed,
    and once in CI. What a normal exit does that matters is done first: the ``atexit`` handlers
    (logging, distributed, multiprocessing), then the flush of stdout and stderr."""
    import atexit

    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe (`| head`) or stream: nothing more to say
                pass
        os._exit(code)


if __name__ == "__main__":
    entry()
