"""How the job's messages word a count: ``1 partition``, ``4 partitions``, ``3,107 items``."""
from __future__ import annotations


def count(n: int | str, one: str, many: str | None = None) -> str:
    """``n`` and the noun for it, singular for exactly 1 (a count a summary lacks, ``"?"``, is
    plural)."""
    many = many or one + "s"
    if not isinstance(n, int):
        return f"{n} {many}"
    return f"{n:,} {one if n == 1 else many}"
