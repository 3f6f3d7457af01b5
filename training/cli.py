"""``afine train``: the training stages, calibration fits and benchmark evaluation.

    afine train stage --stage 1 --output_dir runs/stage1 --data diffiqa=/data/DiffIQA ... [TrainingArguments flags]
    afine train --stage 1 ...                                    (same as 'stage')
    afine train fit-calibration naturalness --model runs/stage1 --data-dir /data/PIPAL --output nr.json
    afine train evaluate --model runs/stage3 --dataset sriqa_bench --data-dir /data/SRIQA-Bench

For several processes/GPUs launch the modules themselves: ``accelerate launch -m training.train_afine ...``,
``accelerate launch -m training.evaluate ...``.
Exit codes: 0 ok, 1 failure, 2 usage error.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

__all__ = ["main", "COMMANDS"]

COMMANDS = {
    "stage": "train one A-FINE stage on transformers.Trainer (1: CLIP + naturalness, 2: fidelity head, 3: calibrations + adapter)",
    "fit-calibration": "fit logistic calibration constants to MOS (naturalness, fidelity, score)",
    "evaluate": "2AFC accuracy / SRCC / PLCC / KRCC on a benchmark, with a resumable score cache",
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: afine train <command> [options]   (or: afine train --stage N [options])", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {text}" for name, text in COMMANDS.items()]
    lines += ["", "Run 'afine train <command> --help' for the options of one command."]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command.startswith("--stage") or command == "--config":
        command, rest = "stage", args
    if command == "stage":
        from .train_afine import main as stage_main

        return stage_main(rest, prog="afine train stage")
    if command == "fit-calibration":
        from .calibration import main as fit_main

        return fit_main(rest, prog="afine train fit-calibration")
    if command == "evaluate":
        from .evaluate import main as eval_main

        return eval_main(rest, prog="afine train evaluate")
    print(f"afine train: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
