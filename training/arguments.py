"""Command line and configuration of the A-FINE training stages.

A stage is configured in three layers, later ones winning:

1. the stage config (``training/configs/stage{1,2,3}.json``, the official ymls, or ``--config FILE``);
2. its ``TrainingArguments`` keys become the parser defaults (``batch_size`` -> ``per_device_train_batch_size``,
   ``num_workers`` -> ``dataloader_num_workers``, ``checkpoint_every`` -> ``save_steps``,
   ``checkpoints_total_limit`` -> ``save_total_limit``, ``log_every`` -> ``logging_steps``,
   ``validation.every`` -> ``eval_steps``, ``optimizer.betas/eps/weight_decay`` -> ``adam_beta1/adam_beta2/
   adam_epsilon/weight_decay``; any other ``TrainingArguments`` field may be given by its own name);
3. the command line, parsed by :class:`transformers.HfArgumentParser` into :class:`StageArguments` and
   :class:`transformers.TrainingArguments` (``--report_to``, ``--gradient_accumulation_steps``,
   ``--gradient_checkpointing``, ``--push_to_hub``, ``--bf16``, ... as in every transformers script).

This module imports transformers lazily (``afine train stage --help`` must stay cheap to import).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

__all__ = ["StageArguments", "ParsedArguments", "ConfigError", "CONFIG_DIR", "CONFIG_KEYS", "load_stage_config",
           "parse_args", "resolve_config", "REFUSED_FLAGS"]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
#: Keys of a stage config file besides ``TrainingArguments`` / :class:`StageArguments` field names.
CONFIG_KEYS = {"stage", "description", "init", "seed", "max_steps", "batch_size", "num_workers", "group_by_size",
               "lr", "optimizer", "scheduler", "augment", "data", "checkpoint_every", "checkpoints_total_limit",
               "log_every", "validation"}
#: Stage-config keys -> TrainingArguments fields.
_TO_TRAINING_ARGS = {"seed": "seed", "max_steps": "max_steps", "batch_size": "per_device_train_batch_size",
                     "num_workers": "dataloader_num_workers", "checkpoint_every": "save_steps",
                     "checkpoints_total_limit": "save_total_limit", "log_every": "logging_steps"}
#: TrainingArguments that would silently do nothing here: the optimiser is AdamW with one group per trained
#: module and the schedule is the official cosine with restarts (set them in the stage config instead).
REFUSED_FLAGS = {
    "lr_scheduler_type": "the schedule is the official cosine annealing with restarts: set 'scheduler' in --config",
    "lr_scheduler_kwargs": "the schedule is the official cosine annealing with restarts: set 'scheduler' in --config",
    "warmup_steps": "the official schedule has no warm-up",
    "warmup_ratio": "the official schedule has no warm-up",
    "optim": "the optimiser is AdamW with one parameter group per trained module (set 'optimizer' in --config)",
    "num_train_epochs": "stages run for --max_steps optimizer steps",
    "label_smoothing_factor": "the loss is the official fidelity loss",
}


class ConfigError(ValueError):
    """A bad configuration or command line (exit code 2)."""


@dataclass
class StageArguments:
    """A-FINE stage arguments (besides ``TrainingArguments``)."""

    stage: Optional[int] = field(default=None, metadata={"help": "stage to train (loads training/configs/stageN.json)",
                                                          "choices": [1, 2, 3]})
    config: Optional[str] = field(default=None, metadata={"help": "a stage config file (JSON, or YAML with PyYAML) "
                                                                  "instead of the shipped default"})
    init: Optional[str] = field(default=None, metadata={
        "help": "starting model: the previous stage's output dir (stages 2, 3); a CLIP dir/Hub id or an AfineConfig "
                ".json (stage 1)"})
    data: list[str] = field(default_factory=list, metadata={
        "help": "folder of a configured dataset source, NAME=DIR (repeatable)", "action": "append",
        "metavar": "NAME=DIR"})
    triplets: list[str] = field(default_factory=list, metadata={
        "help": "official Triplet.txt + image folder; replaces the config's data sources (repeatable)",
        "action": "append", "metavar": "TXT:IMAGE_DIR"})
    val_triplets: list[str] = field(default_factory=list, metadata={
        "help": "validation Triplet.txt + image folder; replaces the config's validation sources (repeatable)",
        "action": "append", "metavar": "TXT:IMAGE_DIR"})
    per_sample: bool = field(default=False, metadata={
        "help": "one backbone pass per triplet (official loop) instead of one per size group"})
    natural_calibration: Optional[str] = field(default=None, metadata={
        "help": "stage 3: start the naturalness calibration from this fit JSON (afine train fit-calibration "
                "naturalness), or 'released' for the released constants 4.9592 / 21.5968; default: the fit recorded "
                "in the --init model (stage 1 runs it at its end)"})
    fit_natural_calibration: bool = field(default=True, metadata={
        "help": "stage 1: fit the naturalness calibration on PIPAL train at the end (official flow) when a PIPAL "
                "folder is known (--data pipal=DIR or --natural_calibration_data)"})
    natural_calibration_data: Optional[str] = field(default=None, metadata={
        "help": "stage 1: PIPAL folder for the naturalness-calibration fit (default: the --data pipal folder)"})
    cache_dir: Optional[str] = field(default=None, metadata={"help": "datasets cache directory"})
    stop_at_step: Optional[int] = field(default=None, metadata={
        "help": "checkpoint and stop after this step without exporting (wall-time-limited jobs; then "
                "--resume_from_checkpoint latest)"})

    def __post_init__(self) -> None:
        for name in ("data", "triplets", "val_triplets"):  # action=append with nargs='+' gives lists of lists
            value = getattr(self, name) or []
            flat: list[str] = []
            for item in value:
                flat += list(item) if isinstance(item, (list, tuple)) else [item]
            setattr(self, name, flat)


@dataclass
class ParsedArguments:
    stage: StageArguments
    training: Any  # transformers.TrainingArguments
    config: dict
    explicit: set  # TrainingArguments / StageArguments names given on the command line


def _read_config_file(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: config file does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in (".yml", ".yaml"):
            import yaml

            cfg = yaml.safe_load(text)
        else:
            cfg = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - any parse error is a config error
        raise ConfigError(f"{path}: cannot parse config: {exc}") from exc
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: config must be a mapping")
    return cfg


def _field_names() -> tuple[set, set]:
    import dataclasses

    from transformers import TrainingArguments

    return ({f.name for f in dataclasses.fields(TrainingArguments) if f.init},
            {f.name for f in dataclasses.fields(StageArguments)})


def load_stage_config(path_or_stage) -> dict:
    """Read a stage config (JSON, or YAML if PyYAML is installed). An int loads the shipped default.

    Missing keys come from the shipped config of its ``stage``. Besides the stage keys (:data:`CONFIG_KEYS`) a file
    may set any ``TrainingArguments`` field by name (e.g. ``"gradient_accumulation_steps": 2``).
    """
    path = CONFIG_DIR / f"stage{int(path_or_stage)}.json" if isinstance(path_or_stage, int) else Path(path_or_stage)
    cfg = _read_config_file(path)
    training_fields, stage_fields = _field_names()
    unknown = sorted(set(cfg) - CONFIG_KEYS - training_fields - stage_fields)
    if unknown:
        raise ConfigError(f"{path}: unknown config keys {unknown}")
    base = _read_config_file(CONFIG_DIR / f"stage{int(cfg['stage'])}.json") if cfg.get("stage") in (1, 2, 3) else {}
    merged = {**base, **cfg}
    if merged.get("stage") not in (1, 2, 3):
        raise ConfigError(f"{path}: 'stage' must be 1, 2 or 3")
    return merged


def _given_flags(argv: Sequence[str]) -> set:
    out = set()
    for token in argv:
        if token.startswith("--"):
            name = token[2:].split("=", 1)[0].replace("-", "_")
            out.add(name[3:] if name.startswith("no_") else name)
    return out


def _defaults_from_config(cfg: dict, training_fields: set, stage_fields: set) -> dict:
    defaults: dict[str, Any] = {
        # faithful to the official runs: no gradient clipping, every parameter of a group decayed (our optimizer)
        "max_grad_norm": 0.0,
        "remove_unused_columns": False,  # batches are lists of native-size images
        "ddp_find_unused_parameters": False,  # every trainable parameter gets a gradient in every step
        "save_strategy": "steps",
        "logging_strategy": "steps",
    }
    for key, target in _TO_TRAINING_ARGS.items():
        if cfg.get(key) is not None:
            defaults[target] = cfg[key]
    if cfg.get("batch_size") is not None:
        defaults["per_device_eval_batch_size"] = cfg["batch_size"]
    opt = cfg.get("optimizer") or {}
    if "betas" in opt:
        defaults["adam_beta1"], defaults["adam_beta2"] = (float(b) for b in opt["betas"])
    if "eps" in opt:
        defaults["adam_epsilon"] = float(opt["eps"])
    if "weight_decay" in opt:
        defaults["weight_decay"] = float(opt["weight_decay"])
    every = int((cfg.get("validation") or {}).get("every", 0) or 0)
    defaults["eval_strategy"] = "steps" if every > 0 else "no"
    if every > 0:
        defaults["eval_steps"] = every
    for key, value in cfg.items():  # TrainingArguments / StageArguments fields given by their own names
        if key in training_fields or (key in stage_fields and key not in ("stage", "config", "init", "data")):
            defaults[key] = value
    return defaults


def parse_args(argv: Optional[Sequence[str]] = None, prog: str = "afine train stage") -> ParsedArguments:
    """Parse a stage command line (raises :class:`ConfigError` on a usage error; ``SystemExit`` for ``--help``)."""
    import sys

    from transformers import HfArgumentParser, TrainingArguments

    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--stage", type=int)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    training_fields, stage_fields = _field_names()
    parser = HfArgumentParser((StageArguments, TrainingArguments), prog=prog,
                              description="Train one A-FINE stage with transformers.Trainer (docs/training.md).")
    for action in parser._actions:  # flags refused below are not advertised
        if action.dest in REFUSED_FLAGS:
            action.help = argparse.SUPPRESS
    cfg: dict = {}
    if known.config is not None or known.stage is not None:
        if known.stage is not None and known.stage not in (1, 2, 3):
            raise ConfigError(f"--stage must be 1, 2 or 3, got {known.stage}")
        cfg = load_stage_config(known.config if known.config is not None else int(known.stage))
        if known.stage is not None and int(known.stage) != cfg["stage"]:
            raise ConfigError(f"--stage {known.stage} disagrees with the config's stage {cfg['stage']}")
        parser.set_defaults(**_defaults_from_config(cfg, training_fields, stage_fields))
    elif not ({"-h", "--help"} & set(argv)):
        raise ConfigError("give --stage 1|2|3 or --config FILE")
    given = _given_flags(argv)
    for name, why in REFUSED_FLAGS.items():
        if name in given or name in cfg:
            raise ConfigError(f"--{name} is not used by the A-FINE stages: {why}")
    try:
        stage_args, training_args = parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
    except SystemExit:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc)) from exc
    if not training_args.output_dir:
        raise ConfigError("give --output_dir (the run folder: model, checkpoint-N/, log.jsonl)")
    return ParsedArguments(stage_args, training_args, cfg, given | (set(cfg) & training_fields))


def _split_spec(spec: str, sep: str, what: str) -> tuple[str, str]:
    left, found, right = spec.partition(sep)
    if not found or not left or not right:
        raise ConfigError(f"{what} expects {'NAME=DIR' if sep == '=' else 'TXT:IMAGE_DIR'}, got {spec!r}")
    return left, right


def resolve_config(parsed: ParsedArguments) -> dict:
    """The stage config with the command line applied and checked (the record written to ``afine_run.json``)."""
    sa, ta = parsed.stage, parsed.training
    cfg = {k: v for k, v in parsed.config.items() if k in CONFIG_KEYS}
    cfg.update(seed=int(ta.seed), max_steps=int(ta.max_steps), batch_size=int(ta.per_device_train_batch_size),
               num_workers=int(ta.dataloader_num_workers), gradient_accumulation_steps=int(ta.gradient_accumulation_steps),
               log_every=ta.logging_steps, checkpoint_every=ta.save_steps, checkpoints_total_limit=ta.save_total_limit,
               optimizer={"betas": [float(ta.adam_beta1), float(ta.adam_beta2)], "eps": float(ta.adam_epsilon),
                          "weight_decay": float(ta.weight_decay)})
    if sa.init is not None:
        cfg["init"] = sa.init
    if sa.per_sample:
        cfg["group_by_size"] = False
    if cfg["max_steps"] < 1:
        raise ConfigError(f"max_steps must be >= 1, got {cfg['max_steps']}")
    if cfg["batch_size"] < 1:
        raise ConfigError(f"per_device_train_batch_size must be >= 1, got {cfg['batch_size']}")
    if not cfg.get("init"):
        raise ConfigError(f"stage {cfg['stage']} needs --init (the previous stage's output directory, "
                          f"e.g. runs/stage{cfg['stage'] - 1})")
    if not isinstance(cfg.get("lr"), dict) or not cfg["lr"]:
        raise ConfigError("'lr' must map module names to learning rates")
    if "learning_rate" in parsed.explicit:  # one rate for every trained module
        cfg["lr"] = {name: float(ta.learning_rate) for name in cfg["lr"]}
    data = [dict(d) for d in cfg.get("data") or []]
    if sa.triplets:
        data = [dict(zip(("triplets", "image_dir"), _split_spec(s, ":", "--triplets"))) for s in sa.triplets]
    overrides = {}
    for spec in sa.data:
        name, folder = _split_spec(spec, "=", "--data")
        overrides[name.strip().lower()] = folder
    names = {str(d.get("dataset", "")).lower() for d in data}
    for name in overrides:
        if name not in names:
            raise ConfigError(f"--data {name}=...: the stage-{cfg['stage']} config has no {name!r} source "
                              f"(it has: {', '.join(sorted(n for n in names if n)) or 'none'})")
    for d in data:
        if "dataset" in d:
            key = str(d["dataset"]).lower()
            if key in overrides:
                d["data_dir"] = overrides[key]
            if not d.get("data_dir"):
                raise ConfigError(f"no folder for the {d['dataset']} data source: pass --data {d['dataset']}=DIR "
                                  "(or replace the config's data with --triplets TXT:IMAGE_DIR)")
        elif not ("triplets" in d and "image_dir" in d):
            raise ConfigError(f"data source {d} needs 'dataset' + 'data_dir' or 'triplets' + 'image_dir'")
    if not data:
        raise ConfigError("no training data: pass --data NAME=DIR or --triplets TXT:IMAGE_DIR")
    cfg["data"] = data
    cfg["validation"] = _resolve_validation(cfg, sa, ta, overrides, data)
    return cfg


def _resolve_validation(cfg: dict, sa: StageArguments, ta, overrides: dict, data: list) -> dict:
    """Validation sources with their folders; configured sources whose dataset has no folder are ``skipped``."""
    val = dict(cfg.get("validation") or {})
    strategy = str(getattr(ta.eval_strategy, "value", ta.eval_strategy))
    every = (ta.eval_steps or ta.logging_steps or 0) if strategy == "steps" else (1 if strategy == "epoch" else 0)
    sources, skipped = [], []
    if sa.val_triplets:
        sources = [dict(zip(("triplets", "image_dir"), _split_spec(s, ":", "--val_triplets"))) for s in sa.val_triplets]
    else:
        train_dirs = {str(d.get("dataset", "")).lower(): d.get("data_dir") for d in data if "dataset" in d}
        for entry in val.get("data") or []:
            entry = dict(entry)
            if "dataset" in entry:
                key = str(entry["dataset"]).lower()
                entry["data_dir"] = entry.get("data_dir") or overrides.get(key) or train_dirs.get(key)
                if not entry["data_dir"]:
                    skipped.append(f"{entry['dataset']}/{entry.get('config', 'auto')}")
                    continue
            sources.append(entry)
    return {"every": every if sources else 0, "data": sources, "skipped": skipped}
