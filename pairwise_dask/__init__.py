"""pairwise-dask: relabel large catalogs from precomputed embeddings with pairwise cross-variance
masks and a seeded knockout tourney, on Dask."""
from __future__ import annotations

__version__ = "0.1.0"

from .config import Settings, load_settings  # noqa: E402
from .errors import BadInputError  # noqa: E402

__all__ = ["BadInputError", "PairwiseLabeler", "Settings", "__version__", "load_settings", "run"]


def run(settings: Settings, **kwargs):  # noqa: ANN001, ANN201 - thin re-export, see job.run
    """Run a job; see :func:`pairwise_dask.job.run`."""
    from .job import run as _run

    return _run(settings, **kwargs)


def __getattr__(name: str):  # the estimator pulls in Dask: import it only when asked for
    if name == "PairwiseLabeler":
        from .estimator import PairwiseLabeler

        return PairwiseLabeler
    raise AttributeError(name)
