"""Benchmark evaluation of an A-FINE model (spec/afine.md §3.4, §4).

    python -m training.evaluate --model runs/stage3 --dataset sriqa_bench --data-dir /data/SRIQA-Bench
    python -m training.evaluate --model DIR --dataset diffiqa --data-dir /data/DiffIQA        # PSY PNY SNY PYY NYY
    python -m training.evaluate --model DIR --dataset kadid10k --data-dir /data/KADID10K --config triplets,mos

Every (distorted, reference) pair needed by the requested views is scored **once** with
:class:`modeling_afine.scoring.AfineScorer`; the outputs are appended to a JSONL cache
(``--cache``, default ``<output>.scores.jsonl``) as they are computed, so an interrupted run continues
where it stopped and a second run (other views, other score field) reuses every score.

Metrics come from :mod:`dataset_scripts.agreement`:

* triplet/pair views (SRIQA-Bench ``pairs*``, DiffIQA per-type views, classic ``auto`` = the shipped
  ``Test/Triplet/Triplet.txt`` when present, else ``triplets`` regenerated with a notice): official 2AFC
  accuracy at delta 0 of ``score(img1, ref)`` vs ``score(img2, ref)`` against ``g12``; ties (g = 0.5) stay in
  the denominator (official protocol);
* MOS views (classic ``mos``, SRIQA-Bench ``MOS*``): SRCC, KRCC, PLCC (linear) and PLCC after a 4-parameter
  logistic fit, of ``score(image, reference)`` against MOS (sign-corrected: A-FINE is lower = better).

The score compared is ``--score-field`` (default ``score_raw``, the unscaled A used by the official stage-3
evaluation; ``naturalness_distorted_raw`` is the stage-1 criterion and ``fidelity_raw`` the stage-2 one;
``score`` is the 0-100 output, a monotonic map of A, so its 2AFC accuracy equals that of A up to saturation).

Several processes (``accelerate launch -m training.evaluate ...`` or ``torchrun``) share the scoring with the
project's sharding convention (``modeling_afine.sharding``): process r of W scores the missing pairs i with
``i % W == r`` into ``<cache>.parts/rank-r-of-W.jsonl``; the main process merges the parts into the cache in input
order and reports. An interrupted sharded run resumes with any number of processes.

Exit codes: 0 ok, 1 failure (missing data, unreadable images, model not found), 2 usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

from modeling_afine import sharding  # torch-free (the package itself imports lazily)

__all__ = [
    "SCORE_FIELDS",
    "DEFAULT_VIEWS",
    "ScoreCache",
    "score_pairs",
    "score_pairs_sharded",
    "merge_part_files",
    "view_records",
    "evaluate",
    "format_table",
    "main",
]

#: Every field stored per pair in the cache (all lower = better; see modeling_afine.AfineOutput).
SCORE_FIELDS = ("score", "score_raw", "fidelity", "naturalness_distorted", "naturalness_reference", "fidelity_raw",
                "naturalness_distorted_raw", "naturalness_reference_raw")

#: Views evaluated when ``--config`` is not given, with their display names (the official test sets).
DEFAULT_VIEWS: dict[str, "OrderedDict[str, str]"] = {
    "sriqa_bench": OrderedDict([("pairs_Reg", "Reg"), ("pairs_Gen", "Gen"), ("pairs", "Overall")]),
    "diffiqa": OrderedDict((t, t) for t in ("PSY", "PNY", "SNY", "PYY", "NYY")),
    # "auto": the authors' shipped Test/Triplet/Triplet.txt when present, else regenerated (with a notice)
    "kadid10k": OrderedDict([("auto", "triplets"), ("mos", "mos")]),
    "pipal": OrderedDict([("auto", "triplets"), ("mos", "mos")]),
    "tid2013": OrderedDict([("auto", "triplets"), ("mos", "mos")]),
}

ImageRef = Union[str, bytes]


class EvaluationError(ValueError):
    """Bad evaluation input (missing data, a cache made by another model); the message names the file."""


# ----------------------------------------------------------------------------------------------- cache


def _key(src: ImageRef) -> str:
    if isinstance(src, bytes):
        return "sha1:" + hashlib.sha1(src).hexdigest()
    return os.path.abspath(src)


class ScoreCache:
    """Append-only JSONL of per-pair A-FINE outputs keyed by (distorted, reference).

    The first line records the model (``{"model": ...}``); a cache written by another model is refused.
    A truncated last line (an interrupted write) is ignored.
    """

    def __init__(self, path: Optional[Union[str, os.PathLike]], model_id: str) -> None:
        self.path = Path(path) if path is not None else None
        self.model_id = model_id
        self.scores: dict[tuple[str, str], dict[str, float]] = {}
        if self.path is not None and self.path.is_file():
            text = self.path.read_text(encoding="utf-8")
            if text and not text.endswith("\n"):
                # an interrupted write left a partial last line: drop it so that appends start cleanly
                text = text[: text.rfind("\n") + 1]
                self.path.write_text(text, encoding="utf-8")
            lines = text.splitlines()
            if not lines:
                self.path.write_text(json.dumps({"model": model_id}) + "\n", encoding="utf-8")
            for i, line in enumerate(lines):
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    if i == len(lines) - 1:
                        continue  # interrupted write
                    raise EvaluationError(f"{self.path}: line {i + 1} is not JSON") from None
                if i == 0 and "model" in rec:
                    if rec["model"] != model_id:
                        raise EvaluationError(f"{self.path}: the cache was written by model {rec['model']!r}, not "
                                              f"{model_id!r}; use another --cache or delete it")
                    continue
                self.scores[(rec["distorted"], rec["reference"])] = {f: rec[f] for f in SCORE_FIELDS if f in rec}
        elif self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({"model": model_id}) + "\n", encoding="utf-8")

    def __contains__(self, key) -> bool:
        return key in self.scores

    def get(self, distorted: ImageRef, reference: ImageRef) -> dict[str, float]:
        return self.scores[(_key(distorted), _key(reference))]

    def add(self, rows: list[tuple[str, str, dict[str, float]]]) -> None:
        for d, r, vals in rows:
            self.scores[(d, r)] = vals
        if self.path is not None and rows:
            with open(self.path, "a", encoding="utf-8") as fh:
                for d, r, vals in rows:
                    fh.write(json.dumps({"distorted": d, "reference": r, **vals}) + "\n")
                fh.flush()


def _as_image(src: ImageRef):
    if isinstance(src, bytes):
        from modeling_afine.image_io import load_image

        return load_image(src)
    return src


def score_pairs(scorer, pairs: Iterable[tuple[ImageRef, ImageRef]], cache: ScoreCache, *, chunk: int = 64,
                resize_reference: bool = False, progress: bool = False) -> int:
    """Score the (distorted, reference) pairs missing from ``cache``, grouped by reference; returns how many.

    Each reference is encoded once per chunk; results are appended to the cache after every chunk.
    """
    todo: "OrderedDict[str, list[tuple[str, ImageRef]]]" = OrderedDict()
    refs: dict[str, ImageRef] = {}
    seen = set()
    for dis, ref in pairs:
        key = (_key(dis), _key(ref))
        if key in cache or key in seen:
            continue
        seen.add(key)
        refs[key[1]] = ref
        todo.setdefault(key[1], []).append((key[0], dis))
    total = sum(len(v) for v in todo.values())
    bar = None
    if progress and total:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="scoring pairs", dynamic_ncols=True)
    for ref_key, items in todo.items():
        for start in range(0, len(items), chunk):
            part = items[start : start + chunk]
            out = scorer.score([_as_image(d) for _, d in part], _as_image(refs[ref_key]), resize_reference=resize_reference)
            rows = []
            for j, (dkey, _) in enumerate(part):
                rows.append((dkey, ref_key, {f: float(getattr(out, f)[j]) for f in SCORE_FIELDS}))
            cache.add(rows)
            if bar is not None:
                bar.update(len(part))
    if bar is not None:
        bar.close()
    return total


def part_files(cache_path) -> list[Path]:
    """The per-process part files of a cache (``<cache>.parts/rank-r-of-W.jsonl``), any world size; also the
    ``<cache>.part{r}-of-{W}`` files that earlier versions wrote next to it."""
    cache_path = Path(cache_path)
    return sharding.part_files(cache_path) + sorted(cache_path.parent.glob(cache_path.name + ".part*-of-*"))


def merge_part_files(cache_path, model_id: str, pairs: Sequence[tuple[ImageRef, ImageRef]] = ()) -> int:
    """Append the rows of every part file to the cache - in the input order of ``pairs``, rows of other pairs
    after them - and delete the part files. Returns the number of rows added. Main process only."""
    store = ScoreCache(cache_path, model_id)
    rows: dict[tuple[str, str], dict[str, float]] = {}
    parts = part_files(cache_path)
    for f in parts:
        rows.update(ScoreCache(f, model_id).scores)
    order, seen = [], set()
    for dis, ref in pairs:
        key = (_key(dis), _key(ref))
        if key in rows and key not in seen and key not in store:
            order.append(key)
            seen.add(key)
    order += [k for k in rows if k not in seen and k not in store]
    store.add([(d, r, rows[(d, r)]) for d, r in order])
    for f in parts:
        f.unlink()
    with contextlib.suppress(OSError):
        sharding.parts_dir(cache_path).rmdir()  # only when empty
    return len(order)


def score_pairs_sharded(scorer, pairs: Iterable[tuple[ImageRef, ImageRef]], cache_path, model_id: str, *,
                        rank: int, world: int, barrier, **kwargs) -> int:
    """:func:`score_pairs` over ``world`` processes; every process calls it. Returns the pairs scored in all.

    The main process first merges part files left by an interrupted run (of any world size) into the cache;
    then the pairs still missing are dealt out in input order (process ``rank`` takes those with
    ``i % world == rank``), each process appends to its own part file, and the main process merges the parts
    into the cache in input order. ``barrier()`` synchronises the processes.
    """
    pairs = list(pairs)
    if rank == 0:
        merge_part_files(cache_path, model_id, pairs)
    barrier()
    store = ScoreCache(cache_path, model_id)
    todo, seen = [], set()
    for dis, ref in pairs:
        key = (_key(dis), _key(ref))
        if key not in store and key not in seen:
            seen.add(key)
            todo.append((dis, ref))
    shard = sharding.World(rank=rank, size=world)
    part = ScoreCache(sharding.part_path(cache_path, shard), model_id)
    score_pairs(scorer, [todo[i] for i in sharding.shard_indices(len(todo), shard)], part, **kwargs)
    barrier()
    if rank == 0:
        merge_part_files(cache_path, model_id, pairs)
    barrier()
    return len(todo)


# ----------------------------------------------------------------------------------------------- data


def _src(cell) -> ImageRef:
    if isinstance(cell, dict):
        if cell.get("path") and os.path.isfile(cell["path"]):
            return str(cell["path"])
        if cell.get("bytes"):
            return bytes(cell["bytes"])
        raise EvaluationError(f"image {cell.get('path')} does not exist")
    return str(cell)


def view_records(dataset: str, data_dir, config: str, split: Optional[str] = None, *, seed: int = 0,
                 cache_dir: Optional[str] = None) -> tuple[str, list[dict]]:
    """``(kind, rows)`` of one view: kind ``"triplet"`` (rows with img1, img2, ref, g12, type) or ``"mos"``
    (rows with image, reference, mos, group); images as paths (or bytes)."""
    import datasets

    import dataset_scripts

    split = split or "test"
    ds = dataset_scripts.load(dataset, data_dir, name=config, split=split, seed=seed, cache_dir=cache_dir)
    cols = set(ds.column_names)
    if {"img1", "img2", "ref", "g12"} <= cols:
        kind, images, keep = "triplet", ("img1", "img2", "ref"), ("g12", "type", "group")
    elif {"image", "reference", "mos"} <= cols:
        kind, images, keep = "mos", ("image", "reference"), ("mos", "group")
    else:
        raise EvaluationError(f"{dataset} view {config!r} is neither a triplet/pair view nor a MOS table")
    ds = ds.select_columns([c for c in images + keep if c in cols])
    for c in images:
        ds = ds.cast_column(c, datasets.Image(decode=False))
    rows = []
    for row in ds:
        rec = {c: _src(row[c]) for c in images}
        rec.update({c: row.get(c) for c in keep if c in row})
        rows.append(rec)
    return kind, rows


def _needed_pairs(kind: str, rows: list[dict]):
    for r in rows:
        if kind == "triplet":
            yield r["img1"], r["ref"]
            yield r["img2"], r["ref"]
        else:
            yield r["image"], r["reference"]


def _metrics(kind: str, rows: list[dict], cache: ScoreCache, field: str) -> dict[str, Any]:
    from dataset_scripts import agreement

    if kind == "triplet":
        s1 = [cache.get(r["img1"], r["ref"])[field] for r in rows]
        s2 = [cache.get(r["img2"], r["ref"])[field] for r in rows]
        g = [float(r["g12"]) for r in rows]
        return {"n": len(rows), "2afc": agreement.two_afc_accuracy(s1, s2, g, lower_is_better=True, delta=0.0),
                "ties": sum(1 for x in g if x == 0.5)}
    s = [cache.get(r["image"], r["reference"])[field] for r in rows]
    m = [float(r["mos"]) for r in rows]
    return {"n": len(rows), "srcc": agreement.srcc(s, m), "krcc": agreement.krcc(s, m),
            "plcc": agreement.plcc(s, m), "plcc_logistic": agreement.plcc(s, m, logistic=True)}


# ----------------------------------------------------------------------------------------------- evaluate


def evaluate(model, dataset: str, data_dir, *, configs: Optional[Sequence[str]] = None, split: Optional[str] = None,
             cache: Optional[Union[str, os.PathLike]] = None, score_field: str = "score_raw", device=None,
             batch_size: int = 8, seed: int = 0, cache_dir: Optional[str] = None, resize_reference: bool = False,
             progress: bool = False, scorer=None) -> dict[str, Any]:
    """Evaluate ``model`` on views of ``dataset``; returns ``{"results": {name: metrics}, ...}``.

    ``model`` is anything :func:`modeling_afine.scoring.load_afine` accepts (or pass a ready ``scorer``).
    ``configs`` defaults to :data:`DEFAULT_VIEWS`. ``scored`` in the result counts the pairs scored by this
    call (0 when everything came from the cache).
    """
    from dataset_scripts.loading import normalize_dataset_name

    if score_field not in SCORE_FIELDS:
        raise EvaluationError(f"unknown score field {score_field!r}; choose one of {', '.join(SCORE_FIELDS)}")
    dataset = normalize_dataset_name(dataset)
    if configs:
        names = OrderedDict((c, DEFAULT_VIEWS.get(dataset, {}).get(c, c)) for c in configs)
    else:
        names = DEFAULT_VIEWS[dataset]
    from .data import resolve_triplet_config

    views = OrderedDict()
    for config, label in names.items():
        config, notice = resolve_triplet_config(dataset, data_dir, config, split or "test")
        if notice:
            print(notice, file=sys.stderr)
        views[label] = (config,) + view_records(dataset, data_dir, config, split, seed=seed, cache_dir=cache_dir)
    model_id = str(model) if scorer is None else str(getattr(scorer, "model_id", "in-memory"))
    state = _distributed_state(device)
    if state is not None and cache is None:
        raise EvaluationError("evaluation over several processes needs --cache or --output (each process writes a "
                              "part file next to the cache)")
    if scorer is None:
        from modeling_afine.scoring import AfineScorer, resolve_model_dir

        model_id = os.path.abspath(resolve_model_dir(model)) if os.path.exists(str(model)) else str(model)
        if state is not None and device is None:
            device = str(state.device)
        scorer = AfineScorer(model, device=device, batch_size=batch_size)
    pairs = [p for _, kind, rows in views.values() for p in _needed_pairs(kind, rows)]
    if state is None:
        store = ScoreCache(cache, model_id)
        scored = score_pairs(scorer, pairs, store, resize_reference=resize_reference, progress=progress)
    else:
        scored = score_pairs_sharded(scorer, pairs, cache, model_id, rank=state.process_index,
                                     world=state.num_processes, barrier=state.wait_for_everyone,
                                     resize_reference=resize_reference, progress=progress and state.is_main_process)
        store = ScoreCache(cache, model_id)
    results = OrderedDict()
    for label, (config, kind, rows) in views.items():
        results[label] = {"config": config, "kind": kind, **_metrics(kind, rows, store, score_field)}
    return {"model": model_id, "dataset": dataset, "data_dir": str(data_dir), "split": split or "test",
            "score_field": score_field, "scored": scored, "pairs": len(store.scores), "results": results}


def _distributed_state(device=None):
    """accelerate's ``PartialState`` when launched on several processes (accelerate launch / torchrun), else None."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=str(device or "").startswith("cpu") or not torch.cuda.is_available())
    if state.num_processes != world:
        raise EvaluationError(f"WORLD_SIZE is {world} but the process group has {state.num_processes} process(es)")
    return state


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def format_table(report: dict) -> str:
    """A plain-text table of :func:`evaluate`'s results (2AFC as accuracy in [0, 1])."""
    cols = ["set", "n", "2afc", "srcc", "krcc", "plcc", "plcc_logistic"]
    rows = [[name] + [_fmt(m.get(c, "")) for c in cols[1:]] for name, m in report["results"].items()]
    used = [i for i, c in enumerate(cols) if i == 0 or any(r[i] for r in rows)]
    table = [[cols[i] for i in used]] + [[r[i] for i in used] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(used))]
    lines = [f"{report['dataset']}  split={report['split']}  score={report['score_field']} (lower is better)"]
    for k, row in enumerate(table):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def build_parser(prog: str = "python -m training.evaluate") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Evaluate an A-FINE model on a benchmark (2AFC, SRCC/PLCC/KRCC).")
    p.add_argument("--model", required=True, help="model directory, Hub id or official afine.pth")
    p.add_argument("--dataset", required=True, help="sriqa_bench, diffiqa, kadid10k, pipal or tid2013")
    p.add_argument("--data-dir", required=True, help="dataset folder in its official layout")
    p.add_argument("--config", help="comma-separated views (default: the official test sets of the dataset)")
    p.add_argument("--split", help="split to evaluate (default test)")
    p.add_argument("--score-field", default="score_raw", choices=SCORE_FIELDS)
    p.add_argument("--output", help="write the results as JSON here")
    p.add_argument("--cache", help="per-pair score cache (JSONL; default <output>.scores.jsonl, none without --output)")
    p.add_argument("--device", default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0, help="seed of regenerated classic triplets")
    p.add_argument("--cache-dir", help="datasets cache directory")
    p.add_argument("--resize-reference", action="store_true", help="stretch references to their distorted image's size")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None, prog: str = "python -m training.evaluate") -> int:
    try:
        args = build_parser(prog).parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if args.batch_size < 1:
        print("error: --batch-size must be >= 1", file=sys.stderr)
        return 2
    from dataset_scripts.loading import normalize_dataset_name

    try:
        normalize_dataset_name(args.dataset)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configs = [c.strip() for c in args.config.split(",") if c.strip()] if args.config else None
    cache = args.cache or (str(Path(args.output).with_suffix("")) + ".scores.jsonl" if args.output else None)
    try:
        from dataset_scripts.problems import DatasetCheckError
    except ImportError:  # pragma: no cover
        DatasetCheckError = ValueError  # type: ignore[misc,assignment]
    try:
        report = evaluate(args.model, args.dataset, args.data_dir, configs=configs, split=args.split, cache=cache,
                          score_field=args.score_field, device=args.device, batch_size=args.batch_size, seed=args.seed,
                          cache_dir=args.cache_dir, resize_reference=args.resize_reference, progress=not args.no_progress)
    except (EvaluationError, DatasetCheckError, FileNotFoundError, OSError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) != 0:  # sharded run: the main process reports
        return 0
    print(format_table(report))
    if cache:
        print(f"scores cached in {cache} ({report['scored']} newly scored, {report['pairs']} in total)")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=2, allow_nan=True) + "\n")
        print(f"results written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
