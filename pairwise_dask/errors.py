"""The one exception type users see for bad input, with the facts they need to fix it; and the
other things a run must tell its user whatever else it prints."""
from __future__ import annotations

import os


#: The ``file`` of an error in settings that came from flags rather than a job file.
COMMAND_LINE = "the command line"


class BadInputError(ValueError):
    """Input that the job refuses, naming where it is and what to do.

    The message always reads ``<where>: <what>. <hint>`` so that a scheduled run's log line is
    enough to find and fix the problem. ``<where>`` calls a path a folder when it is one (or the
    raiser says so with ``folder=True``: an output folder yet to be made), else a file.
    """

    def __init__(self, what: str, *, file: str | None = None, column: str | None = None,
                 row: object | None = None, hint: str | None = None, folder: bool | None = None) -> None:
        self.what, self.file, self.column, self.row, self.hint = what, file, column, row, hint
        self.folder = folder
        where = []
        if file == COMMAND_LINE:  # settings given as flags have no file to name
            where.append(COMMAND_LINE)
        elif file:
            where.append(f"{'folder' if _is_folder(file, folder) else 'file'} {file}")
        if column:
            where.append(f"column {column!r}")
        if row is not None:
            where.append(f"row id {row!r}")
        msg = (", ".join(where) + ": " if where else "") + what
        if hint:
            msg += f". {hint}"
        super().__init__(msg)

    def at(self, *, file: str | None = None, row: object | None = None) -> "BadInputError":
        """The same error with the file (or row) filled in where the raiser could not know it.

        Per-partition checks run on workers that see a block, not a file name; the job adds the
        file on the way out so that the one message still says where to look.
        """
        return BadInputError(self.what, file=self.file or file, column=self.column,
                             row=self.row if self.row is not None else row, hint=self.hint,
                             folder=self.folder if self.file else None)

    def __reduce__(self):  # survive pickling from a worker back to the client
        return (_rebuild, (self.what, self.file, self.column, self.row, self.hint, self.folder))


def _rebuild(what, file, column, row, hint, folder=None) -> "BadInputError":
    return BadInputError(what, file=file, column=column, row=row, hint=hint, folder=folder)


def _is_folder(path: str, folder: bool | None) -> bool:
    """Whether the message calls ``path`` a folder: as the raiser says (an output folder that is
    not there yet), else when it is a local folder now."""
    if folder is not None:
        return folder
    try:
        return "://" not in str(path) and os.path.isdir(path)
    except (OSError, ValueError):
        return False


class NoWorkersError(RuntimeError):
    """The cluster the job did not start had no worker, and none joined within ``worker_wait``
    seconds: before the run (:func:`~pairwise_dask.cluster.wait_for_a_worker`), or after every
    worker left during it (:class:`~pairwise_dask.watch.WorkerWatch`); nothing was kept."""


class Notice(str):
    """A message the user must see even when a run prints nothing else (``--quiet``, ``--json``,
    a scheduled run's log): the cluster has no worker, or lost every one. The command line prints
    it on stderr; the job's other messages are progress on stdout."""
