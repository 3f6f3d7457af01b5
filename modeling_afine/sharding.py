"""The project's convention for splitting a job over processes, GPUs and nodes, and merging the results.

A job is a list of items in input order (the rows of a pairs CSV, the references of a DiffIQA run, the
pairs of a benchmark). Run under ``accelerate launch`` (or ``torchrun``), which set ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``:

* rank ``r`` of ``W`` processes takes the items ``i`` with ``i % W == r`` (:func:`shard_indices`);
* it appends one JSON line per finished item to its own part file,
  ``OUTPUT.parts/rank-RRRRR-of-WWWWW.jsonl`` (:func:`part_path`), each record carrying the item's key;
* before starting, every rank reads ``OUTPUT`` and **all** part files, whatever world size wrote them
  (:func:`read_records`), so a job resumes per rank and after a change of world size;
* after a barrier, the main process merges everything into ``OUTPUT`` (written atomically) in input order
  and removes the part files (:func:`write_records`).

A single process writes to ``OUTPUT`` directly and merges leftover part files the same way. Multi-node
runs need ``OUTPUT`` on a file system that every node sees. This module imports neither torch nor
accelerate; :class:`ProcessGroup` imports them only when ``WORLD_SIZE > 1``.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Iterator, Optional

__all__ = [
    "World",
    "current_world",
    "shard_indices",
    "parts_dir",
    "part_path",
    "part_files",
    "iter_jsonl",
    "read_records",
    "write_records",
    "ProcessGroup",
    "fsync_dir",
    "launched_with_rendezvous",
]


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def current_world() -> World:
    """Rank and world size from the launcher's environment (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``)."""
    size = max(1, _env_int("WORLD_SIZE", 1))
    rank = _env_int("RANK", 0)
    if not 0 <= rank < size:
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={size}")
    return World(rank=rank, size=size, local_rank=_env_int("LOCAL_RANK", rank))


def shard_indices(n: int, world: World) -> list[int]:
    """The input indices rank ``world.rank`` handles: ``i % world.size == world.rank``."""
    return list(range(world.rank, n, world.size))


def parts_dir(output: str | os.PathLike) -> Path:
    output = Path(output)
    return output.with_name(output.name + ".parts")


def part_path(output: str | os.PathLike, world: World) -> Path:
    return parts_dir(output) / f"rank-{world.rank:05d}-of-{world.size:05d}.jsonl"


def part_files(output: str | os.PathLike) -> list[Path]:
    """Every part file next to ``output``, from any world size, in name order."""
    folder = parts_dir(output)
    return sorted(folder.glob("rank-*-of-*.jsonl")) if folder.is_dir() else []


def iter_jsonl(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSON-lines file; a line cut short by an interruption is skipped."""
    try:
        fh = open(path, encoding="utf-8")
    except FileNotFoundError:
        return
    with fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict):
                yield rec


def read_records(
    output: str | os.PathLike,
    key: Callable[[dict[str, Any]], Optional[Hashable]],
    better: Callable[[dict[str, Any], dict[str, Any]], bool] = lambda new, old: True,
) -> dict[Hashable, dict[str, Any]]:
    """One record per key from ``output`` and all its part files (read in that order).

    A later record replaces an earlier one with the same key when ``better(new, old)``; the dict keeps the
    order in which keys were first seen. Records whose key is None are dropped.
    """
    records: dict[Hashable, dict[str, Any]] = {}
    for path in [Path(output), *part_files(output)]:
        for rec in iter_jsonl(path):
            k = key(rec)
            if k is None:
                continue
            old = records.get(k)
            if old is None or better(rec, old):
                records[k] = rec
    return records


def write_records(output: str | os.PathLike, records: Iterable[dict[str, Any]], *, remove_parts: bool = True) -> int:
    """Write ``records`` as JSON lines to ``output`` atomically and durably (temp file, fsync, rename, fsync of
    the folder); then drop the parts."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=output.name + ".", suffix=".tmp", dir=output.parent)
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for rec in records:
                fh.write(json.dumps(rec) + "\n")
                count += 1
            fh.flush()
            os.fsync(fh.fileno())  # on disk before the rename and before the parts are removed
        os.replace(tmp, output)
        fsync_dir(output.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if remove_parts and parts_dir(output).is_dir():
        shutil.rmtree(parts_dir(output), ignore_errors=True)
    return count


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make renames/creations inside ``folder`` durable (a no-op where folders cannot be opened or synced,
    e.g. on Windows or file systems that refuse fsync on directories)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def launched_with_rendezvous() -> bool:
    """True when a launcher (``accelerate launch``, ``torchrun``) set up a rendezvous for a process group.

    ``WORLD_SIZE``/``RANK`` alone (set by hand, or by a job array) only split the work; without
    ``MASTER_ADDR`` there is nobody to wait for, so no barrier and no merge at the end.
    """
    return current_world().distributed and bool(os.environ.get("MASTER_ADDR"))


class ProcessGroup:
    """Barriers between the processes of a launch, through accelerate's ``PartialState`` when installed.

    Falls back to ``torch.distributed`` (gloo on CPU, nccl on CUDA) with the launcher's ``env://``
    rendezvous. The timeout is long (a day by default): ranks may finish far apart after a resume.
    With one process every method is a no-op and nothing is imported.
    """

    def __init__(self, world: World, *, cpu: bool = False, timeout_s: float = 86400.0) -> None:
        self.world = world
        self._dist: Any = None
        self._state: Any = None
        if not world.distributed:
            return
        import torch

        timeout = datetime.timedelta(seconds=timeout_s)
        cpu = cpu or not torch.cuda.is_available()  # PartialState only sets up gloo when told it runs on CPU
        try:
            from accelerate import PartialState
        except ImportError:
            PartialState = None
        if PartialState is not None:
            state = PartialState(cpu=cpu, timeout=timeout)
            if state.num_processes == world.size and state.process_index == world.rank:
                self._state = state
                return
        import torch.distributed as dist

        if not dist.is_initialized():
            if not cpu:  # NCCL collectives run on the current device: one GPU per local rank
                torch.cuda.set_device(world.local_rank % torch.cuda.device_count())
            dist.init_process_group(backend="gloo" if cpu else "nccl", timeout=timeout)
        self._dist = dist

    @property
    def backend(self) -> str:
        """``"accelerate"`` (PartialState), ``"torch.distributed"``, or ``"none"`` for a single process."""
        return "accelerate" if self._state is not None else "torch.distributed" if self._dist is not None else "none"

    def barrier(self) -> None:
        if self._state is not None:
            self._state.wait_for_everyone()
        elif self._dist is not None:
            self._dist.barrier()

    def close(self) -> None:
        dist = self._dist
        if dist is None and self._state is not None:
            import torch.distributed as dist
        if dist is not None and dist.is_initialized():
            dist.destroy_process_group()
        self._dist = self._state = None
