"""``python -m afine_apps COMMAND``: install the evaluate metric, or run one of the apps locally.

Commands:
    install-metric [--source FILE]   make ``evaluate.load("afine")`` work from any folder, offline
    demo [options]                   the demo app (python -m afine_apps demo --help)
    annotate [options]               the annotation app
    metric [options]                 the metric Space's page
    stage-space SPACE_DIR OUT        copy a Space folder plus this package's code into OUT, ready for
                                     `hf upload ORG/NAME OUT --repo-type space`
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence


def _install_metric(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m afine_apps install-metric",
                                     description="Install the A-FINE evaluate metric into evaluate's module cache "
                                                 "so that evaluate.load('afine') works from any folder, offline.")
    parser.add_argument("--source", default=None, help="metric file (default: the one shipped with afine_apps)")
    parser.add_argument("--modules-cache", default=None,
                        help="evaluate's dynamic modules folder (default: $HF_MODULES_CACHE/evaluate_modules)")
    args = parser.parse_args(argv)
    from .metric_cache import install_metric

    try:
        path = install_metric(args.source, args.modules_cache)
    except (OSError, RuntimeError) as exc:
        print(f"install-metric: error: {exc}", file=sys.stderr)
        return 1
    print(f"installed the afine metric at {path}\nevaluate.load('afine') now works from any folder, offline.")
    return 0


#: the packages a Space needs beside its own folder (dataset_scripts: the annotation app's label writer)
STAGED_PACKAGES = ("modeling_afine", "afine_apps", "dataset_scripts")


def stage_space(space_dir, out):
    """Copy the Space folder ``space_dir`` and the code of :data:`STAGED_PACKAGES` (symlinks resolved, no
    caches) into ``out`` and return ``out`` (a ``Path``); the result runs with ``python app.py`` given only its
    ``requirements.txt``."""
    import importlib
    import shutil
    from pathlib import Path

    space_dir, out = Path(space_dir), Path(out)
    if not (space_dir / "app.py").is_file():
        raise FileNotFoundError(f"{space_dir}: not a Space folder (no app.py)")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: exists and is not empty")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".DS_Store")
    shutil.copytree(space_dir, out, ignore=ignore, symlinks=False, dirs_exist_ok=True)
    for name in STAGED_PACKAGES:
        package = Path(importlib.import_module(name).__file__).resolve().parent
        shutil.copytree(package, out / name, ignore=ignore, symlinks=False)
    return out


def _stage_space(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m afine_apps stage-space",
                                     description="Copy a Space folder and the afine-hf code it imports into OUT.")
    parser.add_argument("space_dir", help="e.g. spaces/afine-demo")
    parser.add_argument("out", help="an empty or new folder")
    args = parser.parse_args(argv)
    try:
        out = stage_space(args.space_dir, args.out)
    except OSError as exc:
        print(f"stage-space: error: {exc}", file=sys.stderr)
        return 1
    print(f"staged {args.space_dir} -> {out}\nupload: hf upload ORG/NAME {out} --repo-type space")
    return 0


def _metric(argv: Sequence[str]) -> int:
    import evaluate

    from .launching import base_parser, launch
    from .metric_cache import metric_source
    from .metric_widget import build_metric_widget

    parser = base_parser("The A-FINE evaluate metric's page.")
    parser.add_argument("--readme", default=None, help="metric card to show below the widget")
    args = parser.parse_args(argv)
    metric = evaluate.load(str(metric_source()), model=args.model, device=args.device, dtype=args.dtype,
                           batch_size=args.batch_size)
    launch(build_metric_widget(metric, args.readme), args)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "install-metric":
        return _install_metric(rest)
    if command == "demo":
        from .demo import main as demo_main

        demo_main(rest)
        return 0
    if command == "annotate":
        from .annotate import main as annotate_main

        annotate_main(rest)
        return 0
    if command == "metric":
        return _metric(rest)
    if command == "stage-space":
        return _stage_space(rest)
    print(f"unknown command {command!r}\n\n{__doc__.strip()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
