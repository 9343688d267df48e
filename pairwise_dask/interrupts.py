"""Ctrl-C and SIGTERM where they cannot be acted on at once.

Python raises ``KeyboardInterrupt`` wherever the main thread is. In two places that leaves things
worse than stopping a little later: inside the import of a compiled module (pandas' Cython modules,
imported lazily by pyarrow: the interrupt was swallowed and the run went on, failed with a
``SystemError``, or deadlocked at its next import), and inside a ``LocalCluster``'s start-up (a
half-started cluster that no ``with`` holds, which distributed's exit hook then fails to close, with
a traceback per worker). :func:`held` defers the signal to the end of such a block.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Hold a Ctrl-C (or a SIGTERM with a Python handler) that comes during the block, and act on
    it when the block ends, before any error of the block. A second one is acted on at once, so a
    block that hangs can still be stopped. Outside the main thread (where Python runs no handler)
    it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[tuple[int, Any]] = []
    previous: dict[int, Any] = {}

    def hold(signum: int, frame: Any) -> None:
        if came:
            previous[signum](signum, frame)
        came.append((signum, frame))

    for sig in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(sig)
        if callable(handler):  # a Python handler (Ctrl-C's default, the CLI's SIGTERM); not SIG_IGN/SIG_DFL
            previous[sig] = handler
            signal.signal(sig, hold)
    error: Exception | None = None
    try:
        yield
    except Exception as e:
        if not came:
            raise
        # the signal first: what failed after it most likely failed because of it (a worker
        # process it reached during its start-up makes the cluster's start fail)
        error = e
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if came:
        signum, frame = came[0]
        try:
            previous[signum](signum, frame)  # raises KeyboardInterrupt (or the CLI's Terminated)
        except BaseException as stop:
            raise stop from error
        if error is not None:
            raise error
