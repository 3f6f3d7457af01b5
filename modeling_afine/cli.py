"""The ``afine`` command line entry point.

Each subpackage contributes its own subcommands. They are listed here by name and imported only
when invoked, so ``afine score`` never imports diffusers, datasets or gradio.
"""

from __future__ import annotations

import importlib
import sys
from typing import Callable, Sequence

# name -> (module, function, one-line help). The function takes the remaining argv and returns an exit code.
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "score": ("modeling_afine.cli_score", "score_main", "score image(s) against a reference, or method folders against ground truths (a leaderboard)"),
    "convert": ("modeling_afine.convert_afine_checkpoint", "main", "convert the official afine.pth to a transformers model directory"),
    "data": ("dataset_scripts.cli", "main", "dataset tools: check, majority vote, splits, triplets, Thurstone MOS, export"),
    "enhancer": ("pipelines.cli", "main", "diffusion enhancer: enhance images, generate DiffIQA-style data"),
    "train": ("training.cli", "main", "training stages, calibration fits and benchmark evaluation"),
    "spaces": ("afine_apps.__main__", "main", "evaluate metric install (install-metric), run or stage the Spaces"),
}

# the setup.cfg extra that brings each subcommand's dependencies
EXTRAS = {"data": "datasets", "enhancer": "enhancer", "train": "train", "spaces": "spaces"}


def _usage() -> str:
    lines = ["usage: afine <command> [options]", "", "commands:"]
    width = max(len(n) for n in SUBCOMMANDS)
    for name, (_, _, help_text) in SUBCOMMANDS.items():
        lines.append(f"  {name.ljust(width)}  {help_text}")
    lines.append("")
    lines.append("Run 'afine <command> --help' for the options of one command.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if args else 2
    if args[0] == "--version":
        from . import __version__

        print(__version__)
        return 0
    name = args[0]
    if name not in SUBCOMMANDS:
        print(f"afine: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, func_name, _ = SUBCOMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except KeyboardInterrupt:
        print(f"afine {name}: interrupted", file=sys.stderr)
        return 130
    except ImportError as exc:
        missing = getattr(exc, "name", None) or str(exc)
        extra = EXTRAS.get(name, "all")
        print(
            f"afine {name}: this command needs the optional dependency {missing!r}, which is not installed.\n"
            f"Install it with: pip install 'afine-hf[{extra}]'",
            file=sys.stderr,
        )
        return 2
    func: Callable[[list[str]], int] = getattr(module, func_name)
    try:
        return int(func(args[1:]) or 0)
    except KeyboardInterrupt:  # commands that save partial work say so themselves; this is the fallback
        print(f"afine {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
