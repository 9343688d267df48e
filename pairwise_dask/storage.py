"""Where files live: local paths and any fsspec URL (``s3://``, ``gs://``, ``abfs://``, ``memory://``)
behind one small, Path-like :class:`Location`.

Local paths keep POSIX guarantees the commit relies on (``rename`` is atomic, folders are fsynced);
on object stores a rename is a copy and a delete, so there ``summary.json``, written last, is the
only marker of a complete result. A ``Location`` pickles with its filesystem and options, so a
worker writing its labels part reaches the same storage as the client.
"""
from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass, field
from typing import IO, Any, Iterator

import fsspec
from fsspec.implementations.local import LocalFileSystem

from .errors import BadInputError


def is_url(path: str) -> bool:
    return "://" in str(path)


#: The package behind each object store's URL scheme, and the pairwise-dask extra that installs it.
FS_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "abfs": "adlfs", "abfss": "adlfs",
               "az": "adlfs"}
EXTRAS = {"s3fs": "s3", "gcsfs": "gcs", "adlfs": "azure"}


@dataclass(frozen=True)
class Location:
    """A file or folder on some filesystem, with the few operations the job needs."""

    path: str
    fs: Any = field(compare=False, repr=False)

    # --- construction ------------------------------------------------------------------------
    @classmethod
    def of(cls, where: "str | os.PathLike | Location", storage_options: dict | None = None) -> "Location":
        if isinstance(where, Location):
            return where
        where = os.fspath(where)
        if is_url(where) and not where.startswith("file://"):
            try:
                fs, path = fsspec.core.url_to_fs(where, **(storage_options or {}))
            except ImportError as e:  # fsspec's file system for the scheme is a package of its own
                package = FS_PACKAGES.get(where.split("://", 1)[0].lower())
                raise BadInputError(f"needs a file-system package that is not installed ({e})", file=where,
                                    hint=f"Install it here and on every Dask worker: pip install {package or '…'}"
                                         + (f' (or pip install "pairwise-dask[{EXTRAS[package]}]")'
                                            if package in EXTRAS else "")) from None
            return cls(path.rstrip("/") or path, fs)
        if where.startswith("file://"):
            where = where[len("file://"):]
        return cls(os.path.abspath(where), LocalFileSystem())

    @property
    def local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    @property
    def url(self) -> str:
        """The path as users write it (a plain path for local files)."""
        return self.path if self.local else self.fs.unstrip_protocol(self.path)

    def __str__(self) -> str:
        return self.url

    def __fspath__(self) -> str:
        if not self.local:
            raise TypeError(f"{self.url} is not a local path")
        return self.path

    def __truediv__(self, name: str) -> "Location":
        join = os.path.join if self.local else posixpath.join
        return Location(join(self.path, name), self.fs)

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))

    @property
    def parent(self) -> "Location":
        split = os.path.dirname if self.local else posixpath.dirname
        return Location(split(self.path.rstrip("/")), self.fs)

    # --- queries -----------------------------------------------------------------------------
    def exists(self) -> bool:
        return bool(self.fs.exists(self.path))

    def is_dir(self) -> bool:
        return bool(self.fs.isdir(self.path))

    def iterdir(self) -> Iterator["Location"]:
        for p in sorted(self.fs.ls(self.path, detail=False)):
            p = p.rstrip("/")
            if p != self.path.rstrip("/"):
                yield Location(p if self.local else self.fs._strip_protocol(p), self.fs)

    def files(self, suffixes: tuple[str, ...] = (".parquet",)) -> list["Location"]:
        """Files below this folder with one of ``suffixes``, hidden and ``_``-prefixed parts skipped, sorted."""
        root = self.path.rstrip("/")
        out = []
        for p in self.fs.find(root):
            rel = p[len(root):].lstrip("/") if p.startswith(root) else posixpath.basename(p)
            if p.endswith(suffixes) and not any(part.startswith((".", "_")) for part in rel.split("/")):
                out.append(Location(p if self.local else self.fs._strip_protocol(p), self.fs))
        return sorted(out, key=lambda x: x.path)

    def glob(self, pattern_path: str) -> list["Location"]:
        return [Location(p, self.fs) for p in sorted(self.fs.glob(pattern_path)) if self.fs.isfile(p)]

    # --- reading and writing -----------------------------------------------------------------
    def open(self, mode: str = "rb") -> IO[Any]:
        return self.fs.open(self.path, mode)

    def read_text(self) -> str:
        with self.open("rb") as f:
            return f.read().decode("utf-8")

    def write_text(self, text: str) -> None:
        with self.open("wb") as f:
            f.write(text.encode("utf-8"))

    def read_bytes(self) -> bytes:
        with self.open("rb") as f:
            return f.read()

    def mkdir(self, parents: bool = True, exist_ok: bool = True) -> None:
        """Create the folder and its parents (``pathlib``-compatible signature; always lenient)."""
        self.fs.makedirs(self.path, exist_ok=True)

    def rmtree(self) -> None:
        try:
            self.fs.rm(self.path, recursive=True)
        except (FileNotFoundError, NotADirectoryError):  # nothing there (a file stands where a parent would)
            pass

    def rmdir(self) -> None:
        """Remove an empty folder (raises ``OSError`` when it is not empty)."""
        if self.local:
            os.rmdir(self.path)
        elif any(True for _ in self.iterdir()):
            raise OSError(f"{self.url} is not empty")
        else:
            try:
                self.fs.rmdir(self.path)
            except (FileNotFoundError, NotImplementedError):
                pass

    def replace(self, target: "Location") -> None:
        """Move this entry to ``target`` (atomic rename locally; copy + delete on object stores)."""
        if self.local:
            os.replace(self.path, target.path)
        else:
            self.fs.mv(self.path, target.path, recursive=True)

    def copy_to(self, target: "Location") -> None:
        """Copy this file or folder to ``target`` (which must not exist)."""
        self.fs.copy(self.path, target.path, recursive=True)

    def fsync_dir(self) -> None:
        """Make renames in this local folder durable (no-op elsewhere)."""
        if not self.local:
            return
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
