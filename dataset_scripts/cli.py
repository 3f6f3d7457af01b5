"""``afine data ...`` (also ``python -m dataset_scripts ...``): dataset tools.

Exit codes: 0 success, 1 problems found in the data (check failures, malformed files), 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

PROG = "afine data"


def _diffiqa_targets(root: Path, out_dir: Optional[str]) -> list[tuple[str, Path, Path]]:
    """(split, input split folder, output folder) for each split folder of a DiffIQA root."""
    from .layouts import SPLIT_FOLDERS, diffiqa_split_folders

    folder_of = {v: k for k, v in SPLIT_FOLDERS.items()}
    out = []
    for split, folder in diffiqa_split_folders(root).items():
        if out_dir is None:
            target = folder
        else:
            target = Path(out_dir) / folder_of[split] if split in folder_of else Path(out_dir)
        out.append((split, folder, target))
    return out


def _cmd_check(a) -> int:
    from .check import check
    from .layouts import detect_dataset

    root = Path(a.data_dir).expanduser()
    if a.dataset is None and root.is_dir() and detect_dataset(root) is None:
        print(f"{PROG} check: cannot tell which dataset {root} holds from its layout (KADID-10k, PIPAL and TID2013 "
              "share one); name it with --dataset {diffiqa,sriqa_bench,kadid10k,pipal,tid2013}", file=sys.stderr)
        return 2
    report = check(a.data_dir, a.dataset, decode=not a.no_decode, progress=not a.quiet and not a.json)
    if a.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.format(a.limit))
    return 0 if report.ok else 1


def _cmd_prepare(a) -> int:
    from .loading import config_names, load

    names = a.config or config_names(a.dataset)
    for name in names:
        ds = load(a.dataset, a.data_dir, name, cache_dir=a.cache_dir, seed=a.seed, num_proc=a.num_proc,
                  download_mode="force_redownload" if a.force else None)
        sizes = ", ".join(f"{k}: {len(v)}" for k, v in ds.items()) or "no splits"
        print(f"{a.dataset}/{name}: {sizes}")
    return 0


def _cmd_majority(a) -> int:
    from .derive import write_diffiqa_majority

    for split, folder, target in _diffiqa_targets(Path(a.data_dir), a.out_dir):
        out = target / "majority.txt"
        n = write_diffiqa_majority(folder, out)
        print(f"{split}: {n} majority-labelled pairs -> {out}")
    return 0


def _cmd_triplets(a) -> int:
    from .derive import write_classic_triplets, write_diffiqa_triplets
    from .names import normalize_dataset_name

    ds = normalize_dataset_name(a.dataset)
    if ds == "diffiqa":
        for split, folder, target in _diffiqa_targets(Path(a.data_dir), a.out_dir):
            out = target / "Triplet" / "Triplet.txt"
            print(f"{split}: {write_diffiqa_triplets(folder, out)} triplets -> {out}")
    elif ds == "sriqa_bench":
        print(f"{PROG} triplets: SRIQA-Bench pairs are built by the 'pairs' config; use 'prepare' or 'export'",
              file=sys.stderr)
        return 2
    else:
        counts = write_classic_triplets(a.data_dir, ds, seed=a.seed, out_dir=a.out_dir)
        for split, n in counts.items():
            print(f"{split}: {n} nlogn triplets (seed {a.seed})")
    return 0


def _cmd_types(a) -> int:
    from .derive import write_diffiqa_types
    from .labels import ALL_TYPES

    types = [t.strip().upper() for t in a.types.split(",")] if a.types else list(ALL_TYPES)
    bad = [t for t in types if t not in ALL_TYPES]
    if bad:
        print(f"{PROG} types: unknown type(s) {', '.join(bad)}; expected {', '.join(ALL_TYPES)}", file=sys.stderr)
        return 2
    for split, folder, target in _diffiqa_targets(Path(a.data_dir), a.out_dir):
        counts = write_diffiqa_types(folder, target / "TripletEachType", types)
        print(f"{split}: " + ", ".join(f"{t} {n}" for t, n in counts.items()) + f" -> {target / 'TripletEachType'}")
    return 0


def _cmd_split(a) -> int:
    from .derive import split_classic, split_diffiqa

    if a.kind == "diffiqa":
        counts = split_diffiqa(a.source, a.dest, seed=a.seed, mode=a.mode)
    else:
        counts = split_classic(a.source, a.dest, seed=a.seed, lowercase=a.lowercase)
    print(", ".join(f"{k}: {v} references" for k, v in counts.items()) + f" -> {a.dest}")
    return 0


def _cmd_thurstone(a) -> int:
    from .derive import write_sriqa_mos

    counts = write_sriqa_mos(a.data_dir, a.out_dir, subsets=not a.no_subsets)
    print(", ".join(f"{k}: {v} files" for k, v in counts.items()) + f" -> {a.out_dir}")
    return 0


def _cmd_pairs(a) -> int:
    from .derive import write_sriqa_pairs

    n = write_sriqa_pairs(a.data_dir, a.out, a.mos_folder)
    print(f"{n} evaluation pairs of {a.mos_folder}/ -> {a.out}")
    return 0


def _cmd_normalize(a) -> int:
    from .normalize import PRESETS, normalize_classic_mos_dir, normalize_sriqa_mos_dir

    preset = a.preset or ("sriqa" if a.kind == "sriqa" else "afine_nr")
    lo, hi, flip = PRESETS[preset]
    if a.range:
        lo, hi = a.range
    if a.no_flip:
        flip = False
    if a.kind == "sriqa":
        n = normalize_sriqa_mos_dir(a.mos_dir, a.out_file, new_min=lo, new_max=hi, flip=flip)
    else:
        n = normalize_classic_mos_dir(a.mos_dir, a.out_file, new_min=lo, new_max=hi, flip=flip, lowercase=a.lowercase)
    print(f"{n} lines normalised to [{lo:g}, {hi:g}] ({'lower' if flip else 'higher'} = better) -> {a.out_file}")
    return 0


def _cmd_export(a) -> int:
    from .export import export_views

    written = export_views(a.dataset, a.data_dir, a.out_dir, a.config, cache_dir=a.cache_dir, seed=a.seed,
                           max_rows_per_shard=a.max_rows_per_shard, embed_images=not a.no_embed_images,
                           num_proc=a.num_proc)
    for name, paths in written.items():
        print(f"{name}: {len(paths)} parquet file(s)")
    print(f"dataset card (configs, features) -> {Path(a.out_dir) / 'README.md'}")
    print(f"load with datasets.load_dataset({str(a.out_dir)!r}, CONFIG); share with: "
          f"hf upload ORG/NAME {a.out_dir} --repo-type dataset")
    return 0


def build_parser() -> argparse.ArgumentParser:
    datasets_help = "diffiqa, sriqa_bench, kadid10k, pipal or tid2013"
    p = argparse.ArgumentParser(prog=PROG, description="A-FINE dataset tools: check folders, regenerate the paper's "
                                "derived label files, prepare and export datasets.")
    sub = p.add_subparsers(dest="command", metavar="<command>")

    s = sub.add_parser("check", help="report every problem in a dataset folder")
    s.add_argument("data_dir")
    s.add_argument("--dataset", help=f"{datasets_help} (guessed for DiffIQA / SRIQA-Bench)")
    s.add_argument("--no-decode", action="store_true", help="skip decoding images (no unreadable/size checks)")
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    s.add_argument("--limit", type=int, default=None, help="print at most this many problems")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.set_defaults(func=_cmd_check)

    s = sub.add_parser("prepare", help="prepare configs into the datasets cache and print their sizes")
    s.add_argument("dataset", help=datasets_help)
    s.add_argument("data_dir")
    s.add_argument("--config", action="append", help="config to prepare (repeatable; default all)")
    s.add_argument("--cache-dir")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--num-proc", type=int, default=None, help="processes used to prepare")
    s.add_argument("--force", action="store_true", help="prepare again even if the cache looks current "
                   "(any change to a label file is noticed without it)")
    s.set_defaults(func=_cmd_prepare)

    s = sub.add_parser("majority", help="DiffIQA majority labels -> {split}/majority.txt")
    s.add_argument("data_dir", help="DiffIQA folder (with Train/Validation/Test or one split folder)")
    s.add_argument("--out-dir", help="write under this folder (per split) instead of the data folder")
    s.set_defaults(func=_cmd_majority)

    s = sub.add_parser("triplets", help="training triplets: DiffIQA Triplet.txt or classic nlogn Triplet.txt")
    s.add_argument("dataset", help="diffiqa, kadid10k, pipal or tid2013")
    s.add_argument("data_dir")
    s.add_argument("--out-dir", help="write under this folder (per split) instead of the data folder")
    s.add_argument("--seed", type=int, default=0, help="seed of the nlogn sampling (classic sets)")
    s.set_defaults(func=_cmd_triplets)

    s = sub.add_parser("types", help="DiffIQA per-type files TripletEachType/{PSY,PNY,...}.txt")
    s.add_argument("data_dir")
    s.add_argument("--types", help="comma-separated types (default all: PSY,PNY,SNY,SSY,PYY,SYY,NYY)")
    s.add_argument("--out-dir")
    s.set_defaults(func=_cmd_types)

    s = sub.add_parser("split", help="split by reference 70/10/20 (seeded)")
    s.add_argument("kind", choices=["diffiqa", "classic"],
                   help="diffiqa: SOURCE is an unsplit DiffIQA folder; classic: SOURCE is one 'dist,ref,MOS[,var]' list")
    s.add_argument("source")
    s.add_argument("dest")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--mode", choices=["copy", "hardlink", "symlink"], default="copy", help="how DiffIQA files are placed")
    s.add_argument("--lowercase", action="store_true", help="lower-case names (TID2013)")
    s.set_defaults(func=_cmd_split)

    s = sub.add_parser("thurstone", help="SRIQA-Bench Thurstone Case V MOS from labels/ -> MOS/, MOS_Reg/, MOS_Gen/")
    s.add_argument("data_dir")
    s.add_argument("--out-dir", required=True)
    s.add_argument("--no-subsets", action="store_true", help="write only MOS/")
    s.set_defaults(func=_cmd_thurstone)

    s = sub.add_parser("pairs", help="SRIQA-Bench evaluation pairs (all C(n,2) per group) -> img1,img2,ref,g12 file")
    s.add_argument("data_dir")
    s.add_argument("--mos-folder", default="MOS", choices=["MOS", "MOS_Reg", "MOS_Gen"])
    s.add_argument("--out", required=True, help="output text file")
    s.set_defaults(func=_cmd_pairs)

    s = sub.add_parser("normalize-mos", help="min-max normalise MOS to A-FINE's lower-is-better targets")
    s.add_argument("kind", choices=["classic", "sriqa"], help="classic: dist,ref,MOS files; sriqa: name,score files")
    s.add_argument("mos_dir")
    s.add_argument("out_file")
    s.add_argument("--preset", choices=["afine_nr", "sriqa"], help="afine_nr: [-2, 2] flipped; sriqa: 100 - [0, 100]")
    s.add_argument("--range", nargs=2, type=float, metavar=("MIN", "MAX"))
    s.add_argument("--no-flip", action="store_true", help="keep higher = better")
    s.add_argument("--lowercase", action="store_true", help="lower-case names (TID2013)")
    s.set_defaults(func=_cmd_normalize)

    s = sub.add_parser("export", help="export configs to Parquet + dataset card (load_dataset / Hub-ready)")
    s.add_argument("dataset", help=datasets_help)
    s.add_argument("data_dir")
    s.add_argument("out_dir")
    s.add_argument("--config", action="append", help="config to export (repeatable; default all)")
    s.add_argument("--cache-dir")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--max-rows-per-shard", type=int, default=1000)
    s.add_argument("--num-proc", type=int, default=None, help="processes used to prepare")
    s.add_argument("--no-embed-images", action="store_true",
                   help="keep absolute paths to the local image files instead of embedding the bytes (local use only)")
    s.set_defaults(func=_cmd_export)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``afine data``; returns the exit code (0 ok, 1 data problems, 2 usage error)."""
    parser = build_parser()
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:  # argparse: --help gives 0, errors give 2
        return int(exc.code or 0)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    import warnings

    from .formats import LabelFormatError
    from .problems import DatasetCheckError, DatasetProblemWarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, DatasetProblemWarning):
            print(f"{PROG} {args.command}: warning: {message}", file=sys.stderr)
        else:
            default_show(message, category, filename, lineno, file, line)

    default_show = warnings.showwarning
    try:
        with warnings.catch_warnings():
            warnings.showwarning = show
            return int(args.func(args) or 0)
    except DatasetCheckError as exc:
        print(f"{PROG} {args.command}: {exc.report.format(50)}", file=sys.stderr)
        return 1
    except (LabelFormatError, FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
