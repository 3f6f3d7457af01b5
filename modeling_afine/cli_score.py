"""``afine score``: score distorted image(s) against a reference from the command line.

Exit codes: 0 all scored; 1 some inputs failed (each failure is reported, naming the file); 2 usage or
model-loading error.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

LABELS = {
    "score": "A-FINE score (0-100)",
    "score_raw": "A-FINE raw (afine_all)",
    "fidelity": "fidelity F(dis, ref)",
    "naturalness_distorted": "naturalness N(dis)",
    "naturalness_reference": "naturalness N(ref)",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="afine score",
        description=(
            "Score DISTORTED image(s) against REFERENCE with A-FINE. Every number is LOWER = BETTER. "
            "The order matters: the image under test first, the reference last."
        ),
        epilog="Example: afine score sr_output.png ground_truth.png --json",
    )
    p.add_argument("images", nargs="*", metavar="IMAGE", help="DISTORTED [DISTORTED ...] REFERENCE")
    p.add_argument("--pairs", metavar="CSV", help="CSV with columns distorted,reference (header optional) instead of IMAGE arguments")
    p.add_argument("--output", "-o", metavar="JSONL", help="append one JSON line per result here; rerunning skips pairs already in the file")
    p.add_argument("--model", default=None, help="converted model dir, Hub repo id, or an official afine.pth (default: the Hub copy of the official weights)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps or auto (default)")
    p.add_argument("--dtype", default="float32", help="backbone precision: float32 (default), bfloat16, float16; heads stay fp32")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    p.add_argument("--resize-reference", action="store_true", help="stretch a reference whose size differs from the distorted image")
    p.add_argument("--json", action="store_true", help="print JSON (a list of objects) instead of text")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    return p


def _read_pairs(path: str) -> list[tuple[str, str]]:
    pairs = []
    base = Path(path).parent
    with open(path, newline="", encoding="utf-8") as fh:
        for n, row in enumerate(csv.reader(fh), start=1):
            if not row or not "".join(row).strip() or row[0].startswith("#"):
                continue
            if n == 1 and [c.strip().lower() for c in row[:2]] == ["distorted", "reference"]:
                continue
            if len(row) < 2:
                raise ValueError(f"{path}:{n}: expected 'distorted,reference', got {row!r}")
            dis, ref = (c.strip() for c in row[:2])
            pairs.append((str(_rel(base, dis)), str(_rel(base, ref))))
    if not pairs:
        raise ValueError(f"{path}: no pairs found")
    return pairs


def _rel(base: Path, name: str) -> Path:
    p = Path(name).expanduser()
    return p if p.is_absolute() else base / p


def _done_pairs(path: str) -> set[tuple[str, str]]:
    done: set[tuple[str, str]] = set()
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by an interruption is simply redone
                if "error" not in rec:
                    done.add((rec.get("distorted"), rec.get("reference")))
    except FileNotFoundError:
        pass
    return done


def _format_text(rec: dict[str, Any]) -> str:
    lines = [f"{rec['distorted']}  vs  {rec['reference']}   (lower is better)"]
    for key, label in LABELS.items():
        lines.append(f"  {label:<26} {rec[key]:.6f}")
    return "\n".join(lines)


def score_main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.pairs and args.images:
        parser.error("give either IMAGE arguments or --pairs, not both")
    if args.pairs:
        try:
            pairs = _read_pairs(args.pairs)
        except (OSError, ValueError) as exc:
            print(f"afine score: error: {exc}", file=sys.stderr)
            return 2
    else:
        if len(args.images) < 2:
            parser.error("need at least DISTORTED and REFERENCE (the reference is the last argument)")
        pairs = [(d, args.images[-1]) for d in args.images[:-1]]
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")

    from .image_io import ImageLoadError
    from .scoring import AfineScorer, ModelNotAvailableError

    try:
        scorer = AfineScorer(args.model, device=args.device, dtype=args.dtype, batch_size=args.batch_size)
    except ModelNotAvailableError as exc:
        print(f"afine score: {exc}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"afine score: cannot load the model: {exc}", file=sys.stderr)
        return 2

    skip = _done_pairs(args.output) if args.output else set()
    todo = [p for p in pairs if p not in skip]
    out_fh = open(args.output, "a", encoding="utf-8") if args.output else None
    records: list[dict[str, Any]] = []
    failures = 0
    by_ref: dict[str, list[str]] = {}
    for dis, ref in todo:
        by_ref.setdefault(ref, []).append(dis)
    try:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), unit="img", desc="A-FINE", disable=args.quiet or len(todo) < 2, file=sys.stderr)
        for ref, dis_list in by_ref.items():
            # One call per reference: it is loaded once and encoded once per image size, results are written
            # as each batch finishes, and a bad file is reported without stopping the others.
            try:
                results = scorer.iter_scores(dis_list, ref, resize_reference=args.resize_reference)
                for index, result in results:
                    dis = dis_list[index]
                    if isinstance(result, Exception):
                        failures += 1
                        print(f"afine score: error: {result}", file=sys.stderr)
                        rec = {"distorted": dis, "reference": ref, "error": str(result)}
                    else:
                        rec = {"distorted": dis, "reference": ref}
                        rec.update({k: float(result[k]) for k in LABELS})
                        records.append(rec)
                    if out_fh:
                        out_fh.write(json.dumps(rec) + "\n")
                        out_fh.flush()
                    bar.update(1)
            except (ImageLoadError, ValueError, TypeError, OSError) as exc:  # the reference itself is unusable
                print(f"afine score: error: {exc}", file=sys.stderr)
                missing = [d for d in dis_list if not any(r["distorted"] == d and r["reference"] == ref for r in records)]
                failures += len(missing)
                for d in missing:
                    if out_fh:
                        out_fh.write(json.dumps({"distorted": d, "reference": ref, "error": str(exc)}) + "\n")
                        out_fh.flush()
                bar.update(len(missing))
        bar.close()
    finally:
        if out_fh:
            out_fh.close()

    order = {pair: n for n, pair in enumerate(pairs)}
    records.sort(key=lambda r: order[(r["distorted"], r["reference"])])  # input order, not size-group order
    if args.json:
        print(json.dumps(records, indent=2))
    else:
        for rec in records:
            print(_format_text(rec))
        if skip and args.output:
            print(f"({len(pairs) - len(todo)} pair(s) already in {args.output} were skipped)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(score_main())
