"""The Dask cluster a job runs on: the caller's client, one to a scheduler address, or a
``LocalCluster`` of its own; and the checks a cluster the job did not start must pass first (it
answers as a Dask scheduler, and its workers run this very pairwise-dask)."""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, Iterator

from distributed import WorkerPlugin

from .config import Settings
from .errors import BadInputError, NoWorkersError, Notice
from .interrupts import held

#: Seconds to wait for ``s.scheduler`` to answer before the job gives up on it.
SCHEDULER_TIMEOUT = 30


def _silent(_: str) -> None:
    pass


class _DropBadInputLogs(logging.Filter):
    """Drop a worker's "Compute Failed" record when the task failed on bad input.

    The client re-raises that error and the CLI prints it as its one message; the worker's copy
    (a multi-line repr with a traceback, on the same stderr for a LocalCluster) only buries it.
    Any other task failure is still logged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (str(record.msg).startswith("Compute Failed") and "BadInputError" in record.getMessage())


def _quiet_bad_input_logs() -> None:  # runs in each worker process
    log = logging.getLogger("distributed.worker")
    if not any(isinstance(f, _DropBadInputLogs) for f in log.filters):
        log.addFilter(_DropBadInputLogs())


class CtrlCToTheDriver(WorkerPlugin):
    """A worker plugin for the job's own LocalCluster only: its workers ignore SIGINT. A Ctrl-C at
    a terminal goes to the whole process group, and each worker printed its own
    ``KeyboardInterrupt`` traceback before the run's one line; the run, which gets it too, closes
    them itself. (Workers the job did not start keep their Ctrl-C.)"""

    name = "pairwise-dask-ctrl-c"

    def setup(self, worker: Any) -> None:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():  # a worker's loop runs there
            signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def connect(s: Settings, client: Any = None, echo: Callable[[str], None] = _silent) -> Iterator[Any]:
    """The given client; else one to ``s.scheduler``; else a multi-process ``LocalCluster``.
    With ``worker_malloc = "tuned"`` its workers get :class:`~pairwise_dask.allocator.TunedMalloc`
    (thresholds, and a heap trim whenever a worker is paused or above its spill level).
    Workers the job did not start must run this very pairwise-dask (:func:`check_workers_code`)."""
    from distributed import Client, LocalCluster

    from .allocator import tune_workers

    memory = [u for u in (s.items, s.classes, s.out) if u.startswith("memory://")]
    if memory and client is None and not s.scheduler:  # our own workers are processes
        raise _memory_error(memory[0])
    with contextlib.ExitStack() as stack:
        if client is None and s.scheduler:
            echo(f"Connecting to the Dask scheduler at {s.scheduler}")
            client = stack.enter_context(_client_to(s.scheduler))
            _vet_workers(client, s, echo)
        elif client is None:
            with held():  # raised below the with: the stack then closes what was started
                cluster = stack.enter_context(LocalCluster(
                    n_workers=s.workers, threads_per_worker=s.threads_per_worker, processes=True,
                    memory_limit=s.memory_limit, silence_logs=logging.ERROR, dashboard_address=":0"))
                client = stack.enter_context(Client(cluster))
            client.run(_quiet_bad_input_logs)  # our own workers share our stderr
            client.register_plugin(CtrlCToTheDriver(), name=CtrlCToTheDriver.name)
        else:
            _vet_workers(client, s, echo)
        if memory and any(not a.startswith("inproc://")
                          for a in client.scheduler_info(n_workers=-1).get("workers", {})):
            raise _memory_error(memory[0])
        if s.worker_malloc == "tuned":
            tune_workers(client)
        yield client


def _memory_error(url: str) -> BadInputError:
    """fsspec's memory:// file system lives in one process: workers in other processes would read
    and write their own (empty) one, and their labels would be lost without a word."""
    return BadInputError("is a memory:// URL, which only this process sees; the Dask workers are other processes "
                         "and would read and write memory of their own", file=url,
                         hint="Use a folder or an object store every worker reaches, or a Client(processes=False) "
                              "whose workers share this process")


def wait_for_a_worker(client: Any, seconds: float, echo: Callable[[str], None] = _silent) -> None:
    """Say so when the scheduler has no worker: the job's tasks would otherwise wait in silence.
    With ``seconds`` > 0 wait that long for one and give up after; with 0 go on at once (an
    adaptive cluster only starts workers once tasks arrive, so waiting first would never end)."""
    if client.scheduler_info(n_workers=-1).get("workers"):
        return
    address = client.scheduler.address
    if not seconds:
        echo(Notice(f"The scheduler at {address} has no workers yet: the tasks wait for some to join (start them "
                    f"with `dask worker {address}`; an adaptive cluster starts its own). --worker-wait N gives up "
                    "after N s"))
        return
    echo(Notice(f"The scheduler at {address} has no workers yet; waiting up to {seconds:g} s for one to join "
                f"(start one with `dask worker {address}`)"))
    try:
        client.wait_for_workers(1, timeout=seconds)
    except TimeoutError:  # the cluster's state, not the input: exit 1 as when every worker left mid-run
        raise NoWorkersError(f"no worker joined the Dask scheduler at {address} within {seconds:g} s; the output "
                             f"folder was left as it was. Start workers with `dask worker {address}` "
                             "(cluster/README.md), or raise [cluster] worker_wait / --worker-wait (0: let the "
                             "tasks wait)") from None


def _client_to(address: str) -> Any:
    """A client of the scheduler at ``address``, or a :class:`BadInputError` within
    ``SCHEDULER_TIMEOUT`` seconds. ``Client(address, timeout=…)`` alone waits forever when
    something other than a Dask scheduler answers (a dashboard's port, a proxy), so the
    connection is made in a thread that is given up on when it does not return in time."""
    import threading

    from distributed import Client

    box: dict[str, Any] = {}

    def make() -> None:
        try:
            box["client"] = Client(address, timeout=f"{SCHEDULER_TIMEOUT}s")
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = e

    t = threading.Thread(target=make, name="pairwise-dask-connect", daemon=True)
    t.start()
    t.join(SCHEDULER_TIMEOUT + 5)
    hint = ("Start it (cluster/README.md) or fix [cluster] scheduler / --scheduler (the scheduler's "
            "port, 8786 by default, not the dashboard's); leave it empty to run on a LocalCluster")
    if t.is_alive():
        raise BadInputError(f"no Dask scheduler answered at {address} within {SCHEDULER_TIMEOUT} s", hint=hint)
    e = box.get("error")
    if isinstance(e, (OSError, ValueError)):  # refused, timed out, or not an address at all
        raise BadInputError(f"cannot reach the Dask scheduler at {address} ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else 'no answer'})", hint=hint) from None
    if isinstance(e, Exception):  # something answered, but not in Dask's protocol
        raise BadInputError(f"what answered at {address} is not a Dask scheduler ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:120] if str(e) else 'no detail'})", hint=hint) from None
    if e is not None:
        raise e
    return box["client"]


def code_id() -> tuple[str, str, str]:
    """This process's pairwise-dask: its version, a digest of its source files, and its folder.

    Also sent to the workers by value (:func:`check_workers_code`): it uses only the standard
    library and the package it describes, so it runs on a worker whatever pairwise-dask it has."""
    import hashlib
    from pathlib import Path

    import pairwise_dask

    h = hashlib.sha256()
    root = Path(pairwise_dask.__file__).parent
    for f in sorted(root.glob("*.py")):
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return pairwise_dask.__version__, h.hexdigest()[:12], str(root)


def check_workers_code(c: Any) -> None:
    """Refuse a cluster whose workers run another pairwise-dask than this client (an upgrade
    without restarting a long-lived cluster): their tasks would fail to unpickle or compute
    something else, and the run would hang or die far from the cause. Missing: say so too."""
    mine = code_id()
    try:
        theirs = c.run(_by_value(code_id))
    except ImportError as e:
        raise BadInputError(f"the Dask workers cannot import pairwise-dask ({e})",
                            hint="Install the same pairwise-dask on every worker (cluster/README.md)") from None
    bad = {w: v for w, v in theirs.items() if tuple(v[:2]) != mine[:2]}
    if bad:
        w, (ver, digest, where) = next(iter(bad.items()))
        raise BadInputError(
            f"{len(bad)} of {len(theirs)} Dask workers run another pairwise-dask than this client: {w} has "
            f"{ver} (code {digest}, in {where}), this client {mine[0]} (code {mine[1]}, in {mine[2]})",
            hint="Install the same version on the workers and restart them (a long-lived cluster keeps "
                 "the code it started with)")


def _vet_workers(c: Any, s: Settings, echo: Callable[[str], None]) -> None:
    """Workers the job did not start: wait for one (``worker_wait``), refuse other code, set BLAS to
    one thread."""
    wait_for_a_worker(c, s.worker_wait, echo)
    check_workers_code(c)
    one_thread_blas(c)


def one_thread_blas(c: Any) -> None:
    """BLAS on one thread in every worker process (:class:`~pairwise_dask.threads.OneThreadBLAS`):
    a product's float rounding can depend on the thread count, and ``dask worker --no-nanny``
    leaves BLAS on every core (a nanny sets one thread). Workers inside this process are covered
    by the run's own :func:`~pairwise_dask.threads.one_thread`."""
    from .threads import pin_workers

    pin_workers(c)


def _by_value(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` in a form cloudpickle sends by value (its code, not a reference to a module a
    worker may lack or have in another version)."""
    import types

    return types.FunctionType(fn.__code__, {"__builtins__": __builtins__}, fn.__name__, fn.__defaults__,
                              fn.__closure__)
