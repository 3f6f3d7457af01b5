"""``afine score``: score distorted image(s) against a reference, or method folders against a ground-truth folder.

Inputs, one of:

* ``afine score DISTORTED [DISTORTED ...] REFERENCE`` (or ``afine score DISTORTED ... -r REFERENCE``);
* ``afine score M1_DIR [M2_DIR ...] GT_DIR`` (or ``-r GT_DIR``): each method folder is paired with the
  ground-truth folder by relative path without extension, recursively (:mod:`modeling_afine.folder_pairing`;
  ``--strip-suffix`` / ``--strip-regex`` drop a suffix of the output names first); each ground truth is decoded
  and encoded once for all methods, and a leaderboard is printed (:mod:`modeling_afine.leaderboard`);
* ``--pairs CSV`` with columns ``distorted``, ``reference`` and optionally ``method``, named by a header in any
  order (without a header: distorted, reference by position); with a ``method`` column, the same leaderboard.

Everything that can be checked without the model (missing paths, empty folders, folders without images,
nothing matched, two shell-expanded folders given as files) is checked first and ends the run with exit 2 and
one line, before torch is imported. Outputs without a ground truth and ground truths without an output are
named (the count and the first few on the terminal, all of them in ``--output``) and do not change the exit
code.

A memory fault during a batch halves the batch and retries, down to one pair, which then becomes an error
record (see ``AfineScorer._forward_batch``); the run goes on.

Exit codes: 0 all scored; 1 some inputs failed (each failure is reported, naming the file); 2 usage error, bad
input paths (see above), or the model or device is not available; 130 interrupted (Ctrl-C; what was saved is
kept and a rerun resumes).

``--output`` records (one JSON object per line) hold ``method`` (the method folder's name, the CSV's ``method``
cell, or null), ``image`` (folder runs: the relative path without extension), ``distorted`` / ``reference`` as
given (the CSV cell, the argument, or the path found in the folder) and ``distorted_path`` /
``reference_path``, the resolved absolute paths. Folder runs add one record per unmatched file (an
``unmatched`` field, no scores) after the pairs. Resuming is keyed on
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

from .folder_pairing import IMAGE_EXTENSIONS, FolderPlan, PairingError, glob_mixup, pair_folders
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
#: how many unmatched files the terminal names (all of them go to --output)
SHOW_UNMATCHED = 5
CSV_COLUMNS = ("distorted", "reference", "method")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Score DISTORTED image(s) against REFERENCE with A-FINE, or method folders against a ground-truth folder "
            "(a leaderboard). Every number is LOWER = BETTER. The order matters: the images under test first, "
            "the reference (or ground-truth folder) last, or named with -r."
        ),
        epilog=(
            "Examples: afine score sr_output.png ground_truth.png --json.  "
            "afine score swinir/ esrgan/ gt/ --output scores.jsonl --summary leaderboard.md.  "
            "Several processes/GPUs/nodes: accelerate launch -m modeling_afine score --pairs pairs.csv --output scores.jsonl. "
            "Exit codes: 0 all scored, 1 some inputs failed, 2 usage error, bad paths or model/device unavailable, 130 interrupted."
        ),
    )
    p.add_argument(
        "images", nargs="*", metavar="PATH",
        help="DISTORTED [DISTORTED ...] REFERENCE, or METHOD_DIR [METHOD_DIR ...] GT_DIR: folders pair by relative "
        "path without extension, recursively (sub/baby.jpg <-> sub/baby.png)",
    )
    p.add_argument(
        "-r", "--reference", metavar="REF",
        help="the reference image or the ground-truth folder; every PATH is then an image or method folder under test",
    )
    p.add_argument(
        "--pairs", metavar="CSV",
        help="CSV of pairs instead of PATH arguments: a header naming distorted, reference and optionally method "
        "(any order; other columns ignored), or no header and distorted,reference by position; paths relative to the CSV",
    )
    p.add_argument(
        "--output", "-o", metavar="JSONL",
        help="write one JSON line per pair here as results come (the terminal then shows progress and the summary); "
        "rerunning (from any folder) skips pairs already scored and retries failed ones",
    )
    p.add_argument("--summary", metavar="FILE", help="write the leaderboard to FILE: .csv, .json or .md (Markdown table)")
    p.add_argument(
        "--strip-suffix", metavar="TEXT",
        help="folders: remove TEXT from the end of output file names before matching (--strip-suffix _SwinIR pairs baby_SwinIR.png with baby.png)",
    )
    p.add_argument(
        "--strip-regex", metavar="REGEX",
        help="folders: remove the first match of REGEX from output file names (without extension) before matching, e.g. '_x4_SR$'",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the leaderboard's bootstrap confidence intervals (default 0)")
    p.add_argument("--model", default=None, help="converted model dir, Hub repo id ORG/NAME, or an official afine.pth (default: the Hub copy of the official weights)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps or auto (default); under accelerate each process takes its own GPU")
    p.add_argument("--dtype", default="float32", help="backbone precision: float32 (default), bfloat16, float16; heads stay fp32")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8; halved automatically when memory runs out)")
    p.add_argument("--workers", type=int, default=None, help="threads decoding the next batches while the model runs (default: on CPU half the cores, at most 4; on a GPU up to 8; 0: none)")
    p.add_argument("--resize-reference", action="store_true", help="stretch a reference whose size differs from the distorted image")
    p.add_argument("--json", action="store_true", help="print this run's records as JSON (a list of objects) instead of text")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars (also silences transformers' loading bars)")
    return p


class _Pair:
    """One input pair: the paths as given, the paths to open, the resolved key, its method and image name."""

    __slots__ = ("index", "given", "open", "key", "method", "image")

    def __init__(
        self, index: int, given: tuple[str, str], base: Optional[Path], method: Optional[str] = None, image: Optional[str] = None
    ) -> None:
        self.index = index
        self.given = given
        self.open = tuple(_join(base, p) for p in given)
        self.key = tuple(os.path.realpath(p) for p in self.open)
        self.method = method
        self.image = image


def _join(base: Optional[Path], name: str) -> str:
    p = os.path.expanduser(name)
    if base is not None and not os.path.isabs(p):
        p = os.path.join(base, p)
    return os.path.normpath(p)


def _looks_like_path(cell: str) -> bool:
    return os.path.splitext(cell)[1].lower() in IMAGE_EXTENSIONS or "/" in cell or os.sep in cell


def _read_pairs(path: str) -> tuple[list[tuple[str, str, Optional[str]]], bool]:
    """``([(distorted, reference, method or None)], has_method_column)`` from a pairs CSV.

    A first row naming ``distorted``/``reference``/``method`` (any order, any case) is a header and the columns
    are read by those names; without one, distorted and reference are the first two columns. A first row of
    names that are neither (not paths of files) is an error, as is a header without both required columns.
    """
    pairs: list[tuple[str, str, Optional[str]]] = []
    columns: Optional[dict[str, int]] = None
    base = Path(path).parent
    first = True
    with open(path, newline="", encoding="utf-8-sig") as fh:
        for n, row in enumerate(csv.reader(fh), start=1):
            if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                continue
            cells = [c.strip() for c in row]
            if first:
                first = False
                names = [c.lower() for c in cells]
                if any(c in CSV_COLUMNS for c in names):
                    missing = [c for c in ("distorted", "reference") if c not in names]
                    if missing:
                        raise ValueError(
                            f"{path}:{n}: the header {','.join(cells)} has no {' or '.join(missing)} column "
                            "(expected columns distorted, reference and optionally method, in any order)"
                        )
                    columns = {c: names.index(c) for c in CSV_COLUMNS if c in names}
                    continue
                if len(cells) >= 2 and not any(_looks_like_path(c) or os.path.exists(_join(base, c)) for c in cells[:2]):
                    raise ValueError(
                        f"{path}:{n}: the header {','.join(cells)} names neither distorted nor reference "
                        "(name the columns distorted,reference[,method], or leave the header out and give distorted,reference by position)"
                    )
            if columns is None:
                if len(cells) < 2:
                    raise ValueError(f"{path}:{n}: expected 'distorted,reference', got {row!r}")
                pairs.append((cells[0], cells[1], None))
                continue
            width = max(columns.values()) + 1
            if len(cells) < width:
                cells += [""] * (width - len(cells))
            dis, ref = cells[columns["distorted"]], cells[columns["reference"]]
            if not dis or not ref:
                raise ValueError(f"{path}:{n}: empty distorted or reference cell in {row!r}")
            method = cells[columns["method"]] if "method" in columns else None
            pairs.append((dis, ref, method or None))
    if not pairs:
        raise ValueError(f"{path}: no pairs found")
    return pairs, columns is not None and "method" in columns


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
    head = f"[{rec['method']}] " if rec.get("method") else ""
    lines = [f"{head}{rec['distorted']}  vs  {rec['reference']}   (lower is better)"]
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


class _Inputs:
    """The pairs of a run and how to report them: a leaderboard, the folder plan's unmatched files."""

    def __init__(self, pairs: list[_Pair], *, leaderboard: bool = False, plan: Optional[FolderPlan] = None) -> None:
        self.pairs, self.leaderboard, self.plan = pairs, leaderboard, plan

    def unmatched_records(self) -> list[dict[str, Any]]:
        """One record per output without a ground truth and per ground truth without an output (no scores)."""
        if self.plan is None:
            return []
        out: list[dict[str, Any]] = []
        for method in self.plan.methods:
            for path in self.plan.unmatched_outputs.get(method, []):
                out.append({"method": method, "distorted": path, "reference": None, "unmatched": "no ground truth with this relative name"})
            for key in self.plan.missing_outputs.get(method, []):
                out.append({
                    "method": method, "image": key, "distorted": None, "reference": self.plan.ground_truths[key],
                    "unmatched": "no output of this method for this ground truth",
                })
        return out


class _Usage(Exception):
    """A problem with the arguments or the input paths, found before the model: exit 2 with one line."""


def _missing_path(path: str) -> Optional[str]:
    if not os.path.exists(os.path.expanduser(path)):
        return f"{path}: no such file or folder"
    return None


def _collect(args: argparse.Namespace) -> _Inputs:
    """The run's pairs from --pairs, folders or files; raises :class:`_Usage` for anything checkable now."""
    if args.pairs:
        try:
            rows, has_method = _read_pairs(args.pairs)
        except (OSError, ValueError) as exc:
            raise _Usage(f"error: {exc}") from None
        base = Path(args.pairs).parent
        pairs = [_Pair(i, (d, r), base, method=m) for i, (d, r, m) in enumerate(rows)]
        if not any(os.path.exists(p.open[0]) and os.path.exists(p.open[1]) for p in pairs):
            p = pairs[0]
            missing = p.given[0] if not os.path.exists(p.open[0]) else p.given[1]
            raise _Usage(f"error: {args.pairs}: none of its {len(pairs)} pair(s) has both files (row 1: {missing}: no such file)")
        return _Inputs(pairs, leaderboard=has_method)

    if args.reference is not None:
        outputs, reference = list(args.images), args.reference
        if not outputs:
            raise _Usage("error: give the images or method folders to score before or after -r REFERENCE")
    else:
        if len(args.images) < 2:
            raise _Usage(
                "error: need at least DISTORTED and REFERENCE (the reference is the last argument), "
                "or METHOD_DIR and GT_DIR"
            )
        outputs, reference = list(args.images[:-1]), args.images[-1]
    for path in [*outputs, reference]:
        problem = _missing_path(path)
        if problem:
            raise _Usage(f"error: {problem}")
    folders = [os.path.isdir(p) for p in [*outputs, reference]]
    if any(folders):
        if not all(folders):
            files = [p for p, is_dir in zip([*outputs, reference], folders) if not is_dir]
            raise _Usage(
                f"error: {files[0]}: is a file, but other arguments are folders; give method folders and the "
                "ground-truth folder (afine score M1_DIR M2_DIR GT_DIR), or image files only"
            )
        try:
            plan = pair_folders(outputs, reference, strip_suffix=args.strip_suffix, strip_regex=args.strip_regex)
        except PairingError as exc:
            raise _Usage(f"error: {exc}") from None
        pairs = [_Pair(i, (fp.distorted, fp.reference), None, method=fp.method, image=fp.image) for i, fp in enumerate(plan.pairs)]
        return _Inputs(pairs, leaderboard=True, plan=plan)

    if args.strip_suffix or args.strip_regex:
        raise _Usage("error: --strip-suffix/--strip-regex apply to folders; give METHOD_DIR ... GT_DIR")
    if args.reference is None:
        mixup = glob_mixup(outputs, reference)
        if mixup:
            raise _Usage(f"error: {mixup}")
    pairs = [_Pair(i, (d, reference), None) for i, d in enumerate(outputs)]
    return _Inputs(pairs, leaderboard=False)


def _report_unmatched(inputs: _Inputs, output: Optional[Path]) -> None:
    """The count and the first few unmatched files of a folder run, on stderr."""
    plan = inputs.plan
    if plan is None:
        return
    where = f"all of them in {output}" if output is not None else "--output FILE lists all of them"
    for method in plan.methods:
        for items, what in (
            (plan.unmatched_outputs.get(method, []), f"output(s) of {method} have no ground truth"),
            (plan.missing_outputs.get(method, []), f"ground truth(s) have no output in {method}"),
        ):
            if not items:
                continue
            shown = ", ".join(items[:SHOW_UNMATCHED]) + (", ..." if len(items) > SHOW_UNMATCHED else "")
            _err(f"warning: {len(items)} {what}: {shown} ({where})")


class _Run:
    """State of one ``afine score`` run, so an interruption can say what was saved."""

    def __init__(self, args: argparse.Namespace, inputs: _Inputs, world: World) -> None:
        self.args, self.inputs, self.pairs, self.world = args, inputs, inputs.pairs, world
        self.output = Path(args.output) if args.output else None
        self.records: list[dict[str, Any]] = []  # successes of this run, for printing
        self.failures = 0
        self.written = 0
        self.todo: list[_Pair] = []
        self.skipped = 0
        self.sink: Optional[Path] = None  # where this process appends: --output, or its part file
        self.merged: Optional[list[dict[str, Any]]] = None  # this input's records in --output after the merge

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
        from .method_scores import pair_record

        return pair_record(pair.method, pair.given, result, image=pair.image, paths=pair.key)

    def merge(self) -> int:
        """Rewrite ``--output`` with one record per pair (other inputs' records first, then input order, then
        the unmatched files of a folder run); returns the number of error records of this input."""
        assert self.output is not None
        records = read_records(self.output, _record_key, _supersedes)
        ours = [records.pop(p.key) for p in self.pairs if p.key in records]
        write_records(self.output, [*records.values(), *ours, *self.inputs.unmatched_records()])
        self.merged = ours
        return sum("error" in r for r in ours)


def score_main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.pairs and (args.images or args.reference):
        parser.error("give either PATH arguments (and -r) or --pairs, not both")
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    if args.workers is not None and args.workers < 0:
        parser.error("--workers must be >= 0")
    if args.summary and os.path.splitext(args.summary)[1].lower() not in (".csv", ".json", ".md", ".markdown"):
        _err(f"error: --summary {args.summary}: give a file name ending in .csv, .json or .md")
        return EXIT_UNAVAILABLE
    try:
        inputs = _collect(args)
    except _Usage as exc:
        _err(str(exc))
        return EXIT_UNAVAILABLE
    try:
        world = current_world()
    except ValueError as exc:
        _err(f"error: {exc}")
        return EXIT_UNAVAILABLE
    if world.distributed and not args.output:
        parser.error(f"a run over {world.size} processes needs --output (each process writes its own part)")
    run = _Run(args, inputs, world)
    if run.output is not None and run.output.is_dir():
        _err(f"error: --output {run.output} is a folder; give a file name such as scores.jsonl")
        return EXIT_UNAVAILABLE
    if world.is_main:
        _report_unmatched(inputs, run.output)
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
        from .method_scores import shared_references

        shared = shared_references([p.open[1] for p in run.pairs])
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
            _leaderboard(run, run.merged or [])
        return EXIT_OK
    if run.output is not None and (run.written or part_files(run.output) or run.skipped or run.inputs.plan is not None):
        run.merge()
    order = {p.index: n for n, p in enumerate(run.pairs)}
    by_key = {p.key: p.index for p in run.pairs}
    run.records.sort(key=lambda r: order[by_key[(r["distorted_path"], r["reference_path"])]])
    if args.json:
        printed = [
            {k: v for k, v in r.items() if k not in ("distorted_path", "reference_path") and not (k == "method" and v is None)}
            for r in run.records
        ]
        print(json.dumps(printed, indent=2))
    elif run.output is None:
        for rec in run.records:
            print(_format_text(rec))
    else:  # the records are in the file: the terminal gets the totals and the summary
        print(
            f"{len(run.todo) - run.failures} pair(s) scored, {run.failures} failed"
            + (f", {run.skipped} already in {args.output} skipped" if run.skipped else "")
            + f"; results in {args.output}"
        )
    records = run.merged if run.merged is not None else run.records
    _leaderboard(run, records)
    return EXIT_FAILED if run.failures else EXIT_OK


def _leaderboard(run: _Run, records: list[dict[str, Any]]) -> None:
    """Print the leaderboard (text mode) and write ``--summary``, when the run calls for one."""
    args = run.args
    wanted = run.inputs.leaderboard or args.summary or (run.output is not None and not args.json)
    if not wanted:
        return
    from .leaderboard import summarize
    from .method_scores import unmatched_report

    plan = run.inputs.plan
    methods = plan.methods if plan is not None else None
    board = summarize(records, seed=args.seed, unmatched=unmatched_report(plan) if plan else None, method_order=methods)
    if not board.methods:
        _err("no pair was scored: no leaderboard")
        return
    if not args.json:
        print(board.format_text())
    if args.summary:
        board.save(args.summary)
        if not args.json:
            print(f"leaderboard written to {args.summary}")


if __name__ == "__main__":
    sys.exit(score_main())
