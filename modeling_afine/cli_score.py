"""``afine score``: score distorted image(s) against a reference from the command line.

Exit codes: 0 all scored; 1 some inputs failed (each failure is reported, naming the file); 2 usage error, or
the model or device is not available; 130 interrupted (Ctrl-C; what was saved is kept and a rerun resumes).

``--output`` records (one JSON object per line) hold ``distorted`` / ``reference`` as given (the CSV cell or
the argument) and ``distorted_path`` / ``reference_path``, the resolved absolute paths. Resuming is keyed on
the resolved paths, so a rerun from any folder skips every pair already scored; pairs that failed are
retried, and at the end of each run the file is rewritten (atomically) with exactly one record per pair:
records of other inputs first, then this input's pairs in input order.

Under ``accelerate launch`` / ``torchrun`` (``WORLD_SIZE`` > 1) the pairs are sharded over the processes as
described in :mod:`modeling_afine.sharding`, and the main process merges the parts into ``--output``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Optional

from .sharding import ProcessGroup, World, current_world, part_files, part_path, read_records, shard_indices, write_records

LABELS = {
    "score": "A-FINE score (0-100)",
    "score_raw": "A-FINE raw (afine_all)",
    "fidelity": "fidelity F(dis, ref)",
    "naturalness_distorted": "naturalness N(dis)",
    "naturalness_reference": "naturalness N(ref)",
}

EXIT_OK, EXIT_FAILED, EXIT_UNAVAILABLE, EXIT_INTERRUPTED = 0, 1, 2, 130
PROG = "afine score"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Score DISTORTED image(s) against REFERENCE with A-FINE. Every number is LOWER = BETTER. "
            "The order matters: the image under test first, the reference last."
        ),
        epilog=(
            "Example: afine score sr_output.png ground_truth.png --json.  "
            "Several processes/GPUs/nodes: accelerate launch -m modeling_afine score --pairs pairs.csv --output scores.jsonl. "
            "Exit codes: 0 all scored, 1 some inputs failed, 2 usage error or model/device unavailable, 130 interrupted."
        ),
    )
    p.add_argument("images", nargs="*", metavar="IMAGE", help="DISTORTED [DISTORTED ...] REFERENCE")
    p.add_argument("--pairs", metavar="CSV", help="CSV with columns distorted,reference (header optional; paths relative to the CSV) instead of IMAGE arguments")
    p.add_argument(
        "--output", "-o", metavar="JSONL",
        help="write one JSON line per pair here as results come; rerunning (from any folder) skips pairs already scored and retries failed ones",
    )
    p.add_argument("--model", default=None, help="converted model dir, Hub repo id ORG/NAME, or an official afine.pth (default: the Hub copy of the official weights)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps or auto (default); under accelerate each process takes its own GPU")
    p.add_argument("--dtype", default="float32", help="backbone precision: float32 (default), bfloat16, float16; heads stay fp32")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    p.add_argument("--workers", type=int, default=None, help="threads decoding the next batches while the model runs (default: on CPU half the cores, at most 4; on a GPU up to 8; 0: none)")
    p.add_argument("--resize-reference", action="store_true", help="stretch a reference whose size differs from the distorted image")
    p.add_argument("--json", action="store_true", help="print JSON (a list of objects) instead of text")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars (also silences transformers' loading bars)")
    return p


class _Pair:
    """One input pair: the paths as given, the paths to open, and the resolved key."""

    __slots__ = ("index", "given", "open", "key")

    def __init__(self, index: int, given: tuple[str, str], base: Optional[Path]) -> None:
        self.index = index
        self.given = given
        self.open = tuple(_join(base, p) for p in given)
        self.key = tuple(os.path.realpath(p) for p in self.open)


def _join(base: Optional[Path], name: str) -> str:
    p = os.path.expanduser(name)
    if base is not None and not os.path.isabs(p):
        p = os.path.join(base, p)
    return os.path.normpath(p)


def _read_pairs(path: str) -> list[tuple[str, str]]:
    pairs = []
    with open(path, newline="", encoding="utf-8") as fh:
        for n, row in enumerate(csv.reader(fh), start=1):
            if not row or not "".join(row).strip() or row[0].startswith("#"):
                continue
            if n == 1 and [c.strip().lower() for c in row[:2]] == ["distorted", "reference"]:
                continue
            if len(row) < 2:
                raise ValueError(f"{path}:{n}: expected 'distorted,reference', got {row!r}")
            dis, ref = (c.strip() for c in row[:2])
            pairs.append((dis, ref))
    if not pairs:
        raise ValueError(f"{path}: no pairs found")
    return pairs


def _record_key(rec: dict[str, Any]) -> Optional[tuple[str, str]]:
    dis = rec.get("distorted_path") or rec.get("distorted")
    ref = rec.get("reference_path") or rec.get("reference")
    if not isinstance(dis, str) or not isinstance(ref, str):
        return None
    if "distorted_path" not in rec:  # written before records carried resolved paths: relative to the current folder
        dis, ref = os.path.realpath(dis), os.path.realpath(ref)
    return dis, ref


def _supersedes(new: dict[str, Any], old: dict[str, Any]) -> bool:
    """A success is never replaced by an error; otherwise the later record wins."""
    return not ("error" in new and "error" not in old)


def _format_text(rec: dict[str, Any]) -> str:
    lines = [f"{rec['distorted']}  vs  {rec['reference']}   (lower is better)"]
    for key, label in LABELS.items():
        lines.append(f"  {label:<26} {rec[key]:.6f}")
    return "\n".join(lines)


def _err(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)


@contextlib.contextmanager
def _quiet_progress(quiet: bool) -> Iterator[None]:
    """With ``-q``: no transformers "Loading weights" / "Writing model shards" bars, no Hub download bars."""
    if not quiet:
        yield
        return
    saved = os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS")
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read when transformers / huggingface_hub are imported
    restore: list[Any] = []
    if "transformers.utils.logging" in sys.modules:  # already imported (e.g. called in-process)
        from transformers.utils import logging as hf_logging

        if hf_logging.is_progress_bar_enabled():
            hf_logging.disable_progress_bar()
            restore.append(hf_logging.enable_progress_bar)
    if "huggingface_hub" in sys.modules:
        from huggingface_hub import utils as hub_utils

        if not hub_utils.are_progress_bars_disabled():
            hub_utils.disable_progress_bars()
            restore.append(hub_utils.enable_progress_bars)
    try:
        yield
    finally:
        for undo in restore:
            undo()
        if saved is None:
            os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
        else:
            os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = saved


class _Run:
    """State of one ``afine score`` run, so an interruption can say what was saved."""

    def __init__(self, args: argparse.Namespace, pairs: list[_Pair], world: World) -> None:
        self.args, self.pairs, self.world = args, pairs, world
        self.output = Path(args.output) if args.output else None
        self.records: list[dict[str, Any]] = []  # successes of this run, for printing
        self.failures = 0
        self.written = 0
        self.todo: list[_Pair] = []
        self.skipped = 0
        self.sink: Optional[Path] = None  # where this process appends: --output, or its part file

    def plan(self) -> None:
        mine = [self.pairs[i] for i in shard_indices(len(self.pairs), self.world)]
        done: dict[Any, dict[str, Any]] = {}
        if self.output is not None:
            done = read_records(self.output, _record_key, _supersedes)
        self.todo = [p for p in mine if p.key not in done or "error" in done[p.key]]
        self.skipped = len(mine) - len(self.todo)
        if self.output is not None:
            self.sink = part_path(self.output, self.world) if self.world.distributed else self.output

    def record(self, pair: _Pair, result: Any) -> dict[str, Any]:
        rec: dict[str, Any] = {"distorted": pair.given[0], "reference": pair.given[1]}
        if isinstance(result, Exception):
            rec["error"] = str(result)
        else:
            rec.update({k: float(result[k]) for k in LABELS})
        rec["distorted_path"], rec["reference_path"] = pair.key
        return rec

    def merge(self) -> int:
        """Rewrite ``--output`` with one record per pair (other inputs' records first, then input order)."""
        assert self.output is not None
        records = read_records(self.output, _record_key, _supersedes)
        ours = [records.pop(p.key) for p in self.pairs if p.key in records]
        write_records(self.output, [*records.values(), *ours])
        return sum("error" in r for r in ours)


def score_main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.pairs and args.images:
        parser.error("give either IMAGE arguments or --pairs, not both")
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    if args.workers is not None and args.workers < 0:
        parser.error("--workers must be >= 0")
    if args.pairs:
        try:
            given = _read_pairs(args.pairs)
        except (OSError, ValueError) as exc:
            _err(f"error: {exc}")
            return EXIT_UNAVAILABLE
        base: Optional[Path] = Path(args.pairs).parent
    else:
        if len(args.images) < 2:
            parser.error("need at least DISTORTED and REFERENCE (the reference is the last argument)")
        given = [(d, args.images[-1]) for d in args.images[:-1]]
        base = None
    try:
        world = current_world()
    except ValueError as exc:
        _err(f"error: {exc}")
        return EXIT_UNAVAILABLE
    if world.distributed and not args.output:
        parser.error(f"a run over {world.size} processes needs --output (each process writes its own part)")
    run = _Run(args, [_Pair(i, g, base) for i, g in enumerate(given)], world)
    if run.output is not None and run.output.is_dir():
        _err(f"error: --output {run.output} is a folder; give a file name such as scores.jsonl")
        return EXIT_UNAVAILABLE
    with _quiet_progress(args.quiet):
        try:
            return _score(run)
        except KeyboardInterrupt:
            return _interrupted(run)
        except OSError as exc:  # the output cannot be written (permissions, disk full, ...)
            _err(f"error: {exc}")
            return EXIT_UNAVAILABLE


def _interrupted(run: _Run) -> int:
    if not run.world.is_main:
        return EXIT_INTERRUPTED
    if run.output is None:
        _err("interrupted; nothing was saved (use --output FILE to keep results and resume)")
        return EXIT_INTERRUPTED
    if not run.world.distributed:
        with contextlib.suppress(Exception):
            run.merge()
    where = run.sink if run.sink is not None else run.output
    left = len(run.todo) - run.written
    scope = " of this rank's share" if run.world.distributed else ""
    _err(
        f"interrupted: {run.written} new result(s) saved in {where} ({left} pair(s){scope} left); "
        "run the same command again to resume"
    )
    return EXIT_INTERRUPTED


def _score(run: _Run) -> int:
    args, world = run.args, run.world
    run.plan()
    group = ProcessGroup(world, cpu=str(args.device).lower() == "cpu") if world.distributed else None
    try:
        if run.todo:
            code = _score_todo(run)
            if code is not None:
                return code
        if group is not None:
            group.barrier()  # every rank has finished its part
        return _finish(run)
    finally:
        if group is not None:
            group.close()


def _score_todo(run: _Run) -> Optional[int]:
    """Load the model and score this process's pairs; returns an exit code when the model/device is unusable."""
    args, world = run.args, run.world
    from .model_source import ModelNotAvailableError, resolve_model_dir

    try:
        source = resolve_model_dir(args.model)  # no torch yet: an offline Hub fails within a second or two
    except ModelNotAvailableError as exc:
        _err(str(exc))
        return EXIT_UNAVAILABLE
    except (ValueError, OSError) as exc:  # e.g. a checkpoint that is not an A-FINE checkpoint
        _err(f"cannot load the model: {exc}")
        return EXIT_UNAVAILABLE

    import torch

    from .devices import DeviceNotAvailableError, resolve_device, resolve_dtype

    device = args.device
    if world.distributed and str(device).lower() in ("auto", "cuda") and torch.cuda.is_available():
        device = f"cuda:{world.local_rank % torch.cuda.device_count()}"
    try:
        resolve_device(device)  # before transformers is imported and the weights are read
    except DeviceNotAvailableError as exc:
        _err(f"--device {args.device}: {exc}")
        return EXIT_UNAVAILABLE
    try:
        resolve_dtype(args.dtype)
    except ValueError as exc:
        _err(f"--dtype: {exc}")
        return EXIT_UNAVAILABLE

    from .scoring import AfineScorer

    try:
        scorer = AfineScorer(
            source, device=device, dtype=args.dtype, batch_size=args.batch_size, num_workers=args.workers
        )
    except DeviceNotAvailableError as exc:
        _err(f"--device {args.device}: {exc}")
        return EXIT_UNAVAILABLE
    except ModelNotAvailableError as exc:
        _err(str(exc))
        return EXIT_UNAVAILABLE
    except (ValueError, RuntimeError, OSError) as exc:
        _err(f"cannot load the model: {exc}")
        return EXIT_UNAVAILABLE

    from tqdm.auto import tqdm

    sink = None
    if run.sink is not None:
        run.sink.parent.mkdir(parents=True, exist_ok=True)
        sink = open(run.sink, "a", encoding="utf-8")
    bar = tqdm(
        total=len(run.todo), unit="img", desc="A-FINE" if not world.distributed else f"A-FINE rank {world.rank}",
        disable=args.quiet or len(run.todo) < 2, file=sys.stderr, position=world.local_rank if world.distributed else None,
    )
    try:
        todo = run.todo
        # One call for everything: a reference shared by several pairs is decoded and encoded once per size,
        # the next batches are decoded while the model runs, and a bad file never stops the others. Which
        # references count as shared is decided on the whole input, so a pair's numbers do not depend on the
        # sharding or on what an earlier run already did.
        counts: dict[str, int] = {}
        for p in run.pairs:
            counts[p.open[1]] = counts.get(p.open[1], 0) + 1
        shared = {ref for ref, n in counts.items() if n > 1}
        pairs = [p.open for p in todo]
        for j, result in scorer.iter_pairs(pairs, resize_reference=args.resize_reference, shared_references=shared):
            pair = todo[j]
            rec = run.record(pair, result)
            if "error" in rec:
                run.failures += 1
                bar.clear()
                _err(f"error: {rec['error']}")
            elif not world.distributed:
                run.records.append(rec)
            if sink is not None:
                sink.write(json.dumps(rec) + "\n")
                sink.flush()
                run.written += 1
            bar.update(1)
    finally:
        bar.close()
        if sink is not None:
            sink.close()
    return None


def _finish(run: _Run) -> int:
    args, world = run.args, run.world
    if world.distributed:
        # A completed sharded run exits 0 on every rank: a non-zero exit would make the launcher stop the other
        # ranks and print its own traceback. Failed pairs are error records in --output, counted here.
        if world.is_main:
            remaining_errors = run.merge()
            print(
                f"{PROG}: {len(run.pairs)} pair(s) over {world.size} processes; {remaining_errors} failed "
                f"(error records in {run.output}); results in {run.output}",
                file=sys.stderr,
            )
        return EXIT_OK
    if run.output is not None and (run.written or part_files(run.output) or run.skipped):
        run.merge()
    order = {p.index: n for n, p in enumerate(run.pairs)}
    by_key = {p.key: p.index for p in run.pairs}
    run.records.sort(key=lambda r: order[by_key[(r["distorted_path"], r["reference_path"])]])
    printed = [{k: v for k, v in r.items() if k not in ("distorted_path", "reference_path")} for r in run.records]
    if args.json:
        print(json.dumps(printed, indent=2))
    else:
        for rec in printed:
            print(_format_text(rec))
        if run.skipped:
            print(f"({run.skipped} pair(s) already in {args.output} were skipped)")
    return EXIT_FAILED if run.failures else EXIT_OK


if __name__ == "__main__":
    sys.exit(score_main())
