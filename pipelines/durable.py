"""Crash-safe writing for the long jobs (DiffIQA generation, cropping): images and JSON-lines logs.

An output counts as done only once it is on disk for good: images are written to a temporary file,
flushed and ``fsync``-ed, renamed into place, and the folder is ``fsync``-ed so that the rename
survives a power loss; log records are flushed and ``fsync``-ed line by line.

A power loss can still cut the last log line short. :class:`JsonlLog` repairs that on opening, before
anything is appended, so a torn line never swallows the record written after it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

from PIL import Image

__all__ = ["fsync_dir", "save_png_durable", "copy_file_durable", "JsonlLog", "read_jsonl"]

logger = logging.getLogger(__name__)


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make renames/creations inside ``folder`` durable; see :func:`modeling_afine.sharding.fsync_dir`."""
    from modeling_afine.sharding import fsync_dir as _fsync_dir  # torch-free; imported late (package layering)

    _fsync_dir(folder)


def _replace_durably(tmp: Path, path: Path) -> None:
    os.replace(tmp, path)
    fsync_dir(path.parent)


def save_png_durable(image: Image.Image, path: str | os.PathLike) -> None:
    """Write ``image`` as PNG at ``path``: temporary file, fsync, atomic rename, fsync of the folder.
    A reader (or a resumed run) sees either no file or the complete image."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        image.save(fh, format="PNG")
        fh.flush()
        os.fsync(fh.fileno())
    _replace_durably(tmp, path)


def copy_file_durable(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy ``src`` to ``dst`` with the guarantees of :func:`save_png_durable`."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    with open(src, "rb") as fin, open(tmp, "wb") as fout:
        shutil.copyfileobj(fin, fout)
        fout.flush()
        os.fsync(fout.fileno())
    _replace_durably(tmp, dst)


def _repair_torn_tail(path: Path) -> None:
    """If ``path`` does not end with a newline, its last line was cut short (or only its newline is
    missing). Keep the line if it is a complete JSON record (add the newline), else cut it off."""
    with open(path, "rb+") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        if size == 0:
            return
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return
        # find the start of the last line
        pos, chunk = size, 4096
        start = 0
        while pos > 0:
            step = min(chunk, pos)
            pos -= step
            fh.seek(pos)
            block = fh.read(step)
            nl = block.rfind(b"\n")
            if nl >= 0:
                start = pos + nl + 1
                break
        fh.seek(start)
        tail = fh.read()
        try:
            complete = isinstance(json.loads(tail.decode("utf-8")), dict)
        except (UnicodeDecodeError, ValueError):
            complete = False
        if complete:
            fh.seek(size)
            fh.write(b"\n")
        else:
            fh.truncate(start)
            logger.warning("%s: dropped a torn last line (%d bytes) left by an interrupted run", path, len(tail))
        fh.flush()
        os.fsync(fh.fileno())


class JsonlLog:
    """Append-only JSON-lines log whose records are durable once :meth:`append` returns.

    Opening repairs a torn last line (see :func:`_repair_torn_tail`). Use as a context manager.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        if not created:
            _repair_torn_tail(self.path)
        self._fh = open(self.path, "a", encoding="utf-8")
        if created:
            fsync_dir(self.path.parent)

    def append(self, record: dict[str, Any]) -> None:
        self._fh.write(json.dumps(record, sort_keys=True) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "JsonlLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """The JSON-object lines of ``path``; lines that do not parse (a torn line) are skipped."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                yield rec
