"""Train one stage of A-FINE with accelerate (spec/afine.md §2).

    accelerate launch -m training.train_afine --stage 1 --output-dir runs/stage1 \\
        --data diffiqa=/data/DiffIQA --data kadid10k=/data/KADID10K --data pipal=/data/PIPAL --data tid2013=/data/TID2013
    accelerate launch -m training.train_afine --stage 2 --init runs/stage1/final --output-dir runs/stage2 --data ...
    accelerate launch -m training.train_afine --stage 3 --init runs/stage2/final --output-dir runs/stage3 --data ...

Also runs as plain ``python -m training.train_afine ...`` (one process, CPU or one GPU). The defaults of every
stage live in ``training/configs/stage{1,2,3}.json`` (the official ymls); command-line options override them.

What is trained, the losses, the optimiser (AdamW, betas (0.9, 0.99), weight decay 1e-3) and the cosine
schedule with restarts are described in :mod:`training.stages` and :mod:`training.schedule`. Outputs in
``--output-dir``:

* ``checkpoints/checkpoint-{step}/`` - ``accelerator.save_state`` (model, optimiser, scheduler, RNG) plus
  ``trainer_state.json``; ``--resume`` continues from the latest one at the exact step;
* ``log.jsonl`` - one JSON object per logged step (``step``, ``loss`` and its terms, ``lr`` per group);
* ``final/`` - the trained model (``AfineModel.from_pretrained`` / ``afine score --model``), the input of
  the next stage's ``--init``.

Exit codes: 0 success, 1 failure (bad data, missing files), 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

__all__ = ["main", "parse_args", "load_stage_config", "resolve_config", "build_initial_model", "latest_checkpoint",
           "ConfigError", "CONFIG_DIR"]

logger = logging.getLogger("training.train_afine")

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
_CONFIG_KEYS = {"stage", "description", "init", "seed", "max_steps", "batch_size", "num_workers", "group_by_size",
                "lr", "optimizer", "scheduler", "augment", "data", "checkpoint_every", "checkpoints_total_limit",
                "log_every", "validation"}


class ConfigError(ValueError):
    """A bad configuration or command line (exit code 2)."""


# ----------------------------------------------------------------------------------------------- config


def load_stage_config(path_or_stage) -> dict:
    """Read a stage config (JSON, or YAML if PyYAML is installed). An int loads the shipped default."""
    path = CONFIG_DIR / f"stage{int(path_or_stage)}.json" if isinstance(path_or_stage, int) else Path(path_or_stage)
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
    unknown = sorted(set(cfg) - _CONFIG_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown config keys {unknown}")
    base = json.loads((CONFIG_DIR / f"stage{int(cfg.get('stage', 1))}.json").read_text()) if cfg.get("stage") in (1, 2, 3) else {}
    merged = {**base, **cfg}
    if merged.get("stage") not in (1, 2, 3):
        raise ConfigError(f"{path}: 'stage' must be 1, 2 or 3")
    return merged


def resolve_config(args: argparse.Namespace) -> dict:
    """The stage config with the command-line overrides applied and checked."""
    if args.config is None and args.stage is None:
        raise ConfigError("give --stage 1|2|3 or --config FILE")
    cfg = load_stage_config(args.config if args.config is not None else int(args.stage))
    if args.stage is not None and int(args.stage) != cfg["stage"]:
        raise ConfigError(f"--stage {args.stage} disagrees with the config's stage {cfg['stage']}")
    for key in ("init", "seed", "max_steps", "batch_size", "num_workers", "checkpoint_every", "log_every"):
        value = getattr(args, key, None)
        if value is not None:
            cfg[key] = value
    if args.checkpoints_total_limit is not None:
        cfg["checkpoints_total_limit"] = args.checkpoints_total_limit
    if args.per_sample:
        cfg["group_by_size"] = False
    for key in ("max_steps", "batch_size", "checkpoint_every", "log_every"):
        if int(cfg[key]) < 1:
            raise ConfigError(f"{key} must be >= 1, got {cfg[key]}")
    if int(cfg["num_workers"]) < 0:
        raise ConfigError("num_workers must be >= 0")
    if not cfg.get("init"):
        raise ConfigError(f"stage {cfg['stage']} needs --init (the previous stage's output directory, e.g. runs/stage{cfg['stage'] - 1}/final)")
    if not isinstance(cfg.get("lr"), dict) or not cfg["lr"]:
        raise ConfigError("'lr' must map module names to learning rates")
    # data sources
    data = [dict(d) for d in cfg.get("data") or []]
    if args.triplets:
        data = []
        for spec in args.triplets:
            txt, sep, root = spec.partition(":")
            if not sep or not txt or not root:
                raise ConfigError(f"--triplets expects TXT:IMAGE_DIR, got {spec!r}")
            data.append({"triplets": txt, "image_dir": root})
    overrides = {}
    for spec in args.data or []:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            raise ConfigError(f"--data expects NAME=DIR, got {spec!r}")
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
    cfg["validation"] = _resolve_validation(cfg, args, overrides, data)
    return cfg


def _resolve_validation(cfg: dict, args: argparse.Namespace, overrides: dict, data: list) -> dict:
    """Validation sources with their folders; sources whose folder is unknown are listed in ``skipped``."""
    val = dict(cfg.get("validation") or {})
    every = int(val.get("every", 0) or 0)
    if args.val_every is not None:
        every = int(args.val_every)
    if args.no_validation:
        every = 0
    if every < 0:
        raise ConfigError("--val-every must be >= 0")
    sources, skipped = [], []
    if args.val_triplets:
        for spec in args.val_triplets:
            txt, sep, root = spec.partition(":")
            if not sep or not txt or not root:
                raise ConfigError(f"--val-triplets expects TXT:IMAGE_DIR, got {spec!r}")
            sources.append({"triplets": txt, "image_dir": root})
    else:
        train_dirs = {str(d.get("dataset", "")).lower(): d.get("data_dir") for d in data if "dataset" in d}
        for entry in val.get("data") or []:
            entry = dict(entry)
            if "dataset" in entry:
                key = str(entry["dataset"]).lower()
                entry["data_dir"] = entry.get("data_dir") or overrides.get(key) or train_dirs.get(key)
                if not entry["data_dir"]:
                    skipped.append(f"{entry['dataset']}/{entry.get('config', 'triplets')}")
                    continue
            sources.append(entry)
    return {"every": every if sources else 0, "data": sources, "skipped": skipped}


def load_triplets(cfg: dict, cache_dir: Optional[str] = None):
    from .data import triplets_from_dataset, triplets_from_txt

    out = []
    for d in cfg["data"]:
        if "dataset" in d:
            out += triplets_from_dataset(d["dataset"], d["data_dir"], config=d.get("config", "triplets"),
                                         split=d.get("split", "train"), seed=int(d.get("seed", cfg["seed"])),
                                         cache_dir=cache_dir)
        else:
            out += triplets_from_txt(d["triplets"], d["image_dir"])
    return out


# ----------------------------------------------------------------------------------------------- model


def build_initial_model(init: str, stage: int):
    """The model a stage starts from.

    * an A-FINE model directory (``config.json`` with ``model_type: afine``; the previous stage's ``final/``);
    * stage 1 only: a transformers CLIP (vision) model directory or Hub id, e.g. ``openai/clip-vit-base-patch32``
      (a fresh A-FINE model on that backbone), or an ``AfineConfig`` JSON file (random initialisation, for
      tests and experiments).
    """
    from modeling_afine import AfineConfig, AfineModel

    path = Path(init).expanduser()
    if path.is_file() and path.suffix == ".json":
        if stage != 1:
            raise ConfigError(f"stage {stage} must start from a trained model directory, not a config file ({path})")
        return AfineModel(AfineConfig.from_json_file(str(path)))
    model_type = None
    if path.is_dir():
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise FileNotFoundError(f"{path}: no config.json (expected a model directory)")
        model_type = json.loads(cfg_file.read_text()).get("model_type")
    elif path.exists():
        raise FileNotFoundError(f"{path}: expected a model directory or an AfineConfig .json file")
    if model_type == "afine":
        return AfineModel.from_pretrained(str(path))
    if stage != 1:
        raise ConfigError(f"stage {stage} starts from the previous stage's A-FINE model directory; {init} is not one")
    from transformers import CLIPVisionModel

    clip = CLIPVisionModel.from_pretrained(str(path) if path.is_dir() else init)
    model = AfineModel(AfineConfig(vision_config=clip.config.to_dict()))
    model.load_clip_vision_weights(clip.state_dict())
    return model


# ----------------------------------------------------------------------------------------------- checkpoints


def _checkpoint_step(path: Path) -> int:
    m = re.fullmatch(r"checkpoint-(\d+)", path.name)
    return int(m.group(1)) if m else -1


def latest_checkpoint(output_dir) -> Optional[Path]:
    """The newest complete ``checkpoints/checkpoint-{step}`` of a run (one with ``trainer_state.json``)."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return None
    done = [p for p in root.iterdir() if _checkpoint_step(p) >= 0 and (p / "trainer_state.json").is_file()]
    return max(done, key=_checkpoint_step) if done else None


def _prune(output_dir: Path, limit: Optional[int]) -> None:
    if not limit:
        return
    root = output_dir / "checkpoints"
    done = sorted((p for p in root.iterdir() if _checkpoint_step(p) >= 0), key=_checkpoint_step)
    for old in done[: max(0, len(done) - int(limit))]:
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------------------------- CLI


def build_parser(prog: str = "python -m training.train_afine") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Train one stage of A-FINE (accelerate).")
    p.add_argument("--stage", type=int, choices=(1, 2, 3), help="stage to train (loads training/configs/stageN.json)")
    p.add_argument("--config", help="a stage config file (JSON or YAML) instead of the shipped default")
    p.add_argument("--init", help="starting model: previous stage's output dir (stages 2, 3); CLIP dir/Hub id or AfineConfig .json (stage 1)")
    p.add_argument("--output-dir", required=True, help="run folder: checkpoints/, log.jsonl, final/")
    p.add_argument("--data", action="append", metavar="NAME=DIR", help="folder of a configured dataset source (repeatable)")
    p.add_argument("--triplets", action="append", metavar="TXT:IMAGE_DIR",
                   help="official Triplet.txt + image folder; replaces the config's data sources (repeatable)")
    p.add_argument("--max-steps", type=int, help="optimizer steps (the 4-cycle cosine schedule is scaled to it)")
    p.add_argument("--batch-size", type=int, help="triplets per process per step")
    p.add_argument("--seed", type=int)
    p.add_argument("--num-workers", type=int, help="data-loader workers per process")
    p.add_argument("--checkpoint-every", type=int, help="save a checkpoint every N steps (and at the end)")
    p.add_argument("--checkpoints-total-limit", type=int, help="keep only the newest N checkpoints")
    p.add_argument("--log-every", type=int, help="log loss and lr every N steps")
    p.add_argument("--val-every", type=int, help="2AFC validation every N steps (0: off)")
    p.add_argument("--val-triplets", action="append", metavar="TXT:IMAGE_DIR",
                   help="validation Triplet.txt + image folder; replaces the config's validation sources (repeatable)")
    p.add_argument("--no-validation", action="store_true", help="no validation during training")
    p.add_argument("--per-sample", action="store_true", help="one backbone pass per triplet (official loop) instead of per size group")
    p.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="continue from the latest checkpoint in --output-dir (or from the given checkpoint folder)")
    p.add_argument("--stop-at-step", type=int, default=None,
                   help="checkpoint and stop after this step without exporting (for wall-time-limited jobs; then --resume)")
    p.add_argument("--natural-calibration", metavar="JSON",
                   help="stage 3: start the naturalness calibration from a fit (afine train fit-calibration naturalness)")
    p.add_argument("--cache-dir", help="datasets cache directory")
    p.add_argument("--cpu", action="store_true", help="force CPU even if a GPU is visible")
    p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default=None,
                   help="autocast for the CLIP backbone (heads always fp32); default: accelerate's setting")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def _apply_natural_calibration(model, path: str) -> None:
    from .calibration import apply_fit, read_fit

    fit = read_fit(path)
    if "natural_center" not in fit or "natural_scale" not in fit:
        raise ConfigError(f"{path}: no natural_center / natural_scale (write it with 'afine train fit-calibration naturalness')")
    apply_fit(model, {"natural_center": fit["natural_center"], "natural_scale": fit["natural_scale"]})


def load_validation_sets(cfg: dict, cache_dir: Optional[str] = None, verbose: bool = True) -> "list[tuple[str, list]]":
    from .data import triplets_from_dataset, triplets_from_txt

    sets = []
    for d in cfg["validation"]["data"]:
        if "dataset" in d:
            name = f"{d['dataset']}/{d.get('config', 'triplets')}/{d.get('split', 'validation')}"
            sets.append((name, triplets_from_dataset(d["dataset"], d["data_dir"], config=d.get("config", "triplets"),
                                                     split=d.get("split", "validation"), seed=int(d.get("seed", cfg["seed"])),
                                                     cache_dir=cache_dir, allow_empty=True)))
        else:
            sets.append((Path(d["triplets"]).stem, triplets_from_txt(d["triplets"], d["image_dir"])))
    empty = [name for name, t in sets if not t]
    if empty and verbose:
        print(f"validation sets without triplets are skipped: {', '.join(empty)}")
    return [(name, t) for name, t in sets if t]


def validate(stage_module, sets, image_mean, image_std, batch_size: int, *, process_index: int = 0,
             num_processes: int = 1, gather=None) -> dict[str, float]:
    """Official validation: 2AFC accuracy at delta 0 of the stage's scores of (img1, img2) against g12, per set.

    With several processes each scores every ``num_processes``-th triplet and ``gather`` (e.g.
    ``accelerate.utils.gather_object``) collects the scores; every process must call it.
    """
    from dataset_scripts.agreement import two_afc_accuracy

    from .data import TripletDataset, collate_triplets

    was_training = stage_module.training
    stage_module.eval()
    out = {}
    try:
        for name, triplets in sets:
            ds = TripletDataset(triplets, image_mean=image_mean, image_std=image_std, hflip=False, rot=False)
            mine = list(range(process_index, len(ds), num_processes))
            scored = []
            for start in range(0, len(mine), batch_size):
                idx = mine[start : start + batch_size]
                a, b = stage_module.triplet_scores(collate_triplets([ds[(i, 0)] for i in idx]))
                scored += list(zip(idx, a.tolist(), b.tolist()))
            if gather is not None and num_processes > 1:
                scored = gather(scored)
            scored = sorted(scored)
            if len(scored) != len(ds):
                raise RuntimeError(f"validation of {name}: got {len(scored)} scores for {len(ds)} triplets")
            out[name] = two_afc_accuracy([s[1] for s in scored], [s[2] for s in scored], [t.g12 for t in triplets],
                                         lower_is_better=True, delta=0.0)
    finally:
        stage_module.train(was_training)
    return out


def _checksum(model) -> list[float]:
    """Per-parameter float64 (sum, sum of squares) of the trainable parameters: equal across in-sync processes."""
    import torch

    out = []
    with torch.no_grad():
        for _, p in sorted((n, p) for n, p in model.named_parameters() if p.requires_grad):
            d = p.detach().double()
            out += [float(d.sum()), float((d * d).sum())]
    return out


def train(args: argparse.Namespace) -> int:
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from .data import StepBatchSampler, TripletDataset, collate_triplets
    from .schedule import build_cosine_restart_scheduler, scale_periods
    from .stages import StageModule, set_trainable

    cfg = resolve_config(args)
    output_dir = Path(args.output_dir)
    kwargs: dict[str, Any] = {"cpu": bool(args.cpu)}
    if args.mixed_precision is not None:
        kwargs["mixed_precision"] = args.mixed_precision
    accelerator = Accelerator(**kwargs)
    is_main = accelerator.is_main_process
    if is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
    seed = int(cfg["seed"])
    set_seed(seed)

    resume_from: Optional[Path] = None
    start_step = 0
    if args.resume is not None:
        resume_from = latest_checkpoint(output_dir) if args.resume == "latest" else Path(args.resume)
        if resume_from is None:
            if is_main:
                print(f"no checkpoint in {output_dir / 'checkpoints'}; starting from step 0")
        elif not (resume_from / "trainer_state.json").is_file():
            raise FileNotFoundError(f"{resume_from}: not a complete checkpoint (no trainer_state.json)")
        else:
            state = json.loads((resume_from / "trainer_state.json").read_text())
            start_step = int(state["step"])
            for key in ("stage", "max_steps", "seed"):
                if key in state and state[key] != cfg[key]:
                    raise ConfigError(f"{resume_from}: the checkpoint was made with {key}={state[key]}, "
                                      f"this run has {key}={cfg[key]}; resume with the same settings")

    val_every = int(cfg["validation"]["every"])
    # The main process prepares the datasets cache first; the others then read it (no concurrent writes).
    with accelerator.main_process_first():
        triplets = load_triplets(cfg, args.cache_dir)
        val_sets = load_validation_sets(cfg, args.cache_dir, verbose=is_main) if val_every else []
    if is_main and cfg["validation"]["skipped"]:
        print(f"validation sources without a folder are skipped: {', '.join(cfg['validation']['skipped'])} "
              "(give --data NAME=DIR to include them)")
    model = build_initial_model(str(cfg["init"]), cfg["stage"])
    if args.natural_calibration:
        _apply_natural_calibration(model, args.natural_calibration)
    model.float()
    groups = set_trainable(model, tuple(cfg["lr"]))
    opt_cfg = cfg["optimizer"]
    optimizer = torch.optim.AdamW(
        [{"params": params, "lr": float(cfg["lr"][name]), "name": name} for name, params in groups.items()],
        betas=tuple(opt_cfg.get("betas", (0.9, 0.99))), weight_decay=float(opt_cfg.get("weight_decay", 1e-3)),
        eps=float(opt_cfg.get("eps", 1e-8)),
    )
    sched_cfg = cfg["scheduler"]
    periods = scale_periods(sched_cfg["periods"], int(cfg["max_steps"]))
    scheduler = build_cosine_restart_scheduler(optimizer, periods, sched_cfg["restart_weights"], float(sched_cfg["eta_min"]))
    stage_module = StageModule(model, cfg["stage"], group_by_size=bool(cfg.get("group_by_size", True)))
    stage_module, optimizer = accelerator.prepare(stage_module, optimizer)
    # The scheduler is registered, not prepared: accelerate would step it once per process.
    accelerator.register_for_checkpointing(scheduler)
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        if is_main:
            print(f"resumed from {resume_from} at step {start_step}")

    dataset = TripletDataset(triplets, image_mean=model.config.image_mean, image_std=model.config.image_std,
                             hflip=bool(cfg["augment"].get("hflip", True)), rot=bool(cfg["augment"].get("rot", True)),
                             seed=seed)
    sampler = StepBatchSampler(len(dataset), int(cfg["batch_size"]), max_steps=int(cfg["max_steps"]),
                               start_step=start_step, seed=seed, num_processes=accelerator.num_processes,
                               process_index=accelerator.process_index)
    workers = int(cfg["num_workers"])
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_triplets,
                                         num_workers=workers, persistent_workers=False)
    if is_main:
        print(f"stage {cfg['stage']}: {len(dataset)} triplets, {accelerator.num_processes} process(es) x "
              f"{cfg['batch_size']} per step, steps {start_step + 1}..{cfg['max_steps']}, schedule periods {periods}, "
              f"trainable {sum(p.numel() for ps in groups.values() for p in ps)} parameters in {list(groups)}")
        (output_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")

    bar = None
    if is_main and not args.no_progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=int(cfg["max_steps"]), initial=start_step, desc=f"stage {cfg['stage']}", dynamic_ncols=True)
    log_path = output_dir / "log.jsonl"
    t0 = time.time()
    step = start_step
    first_loss: Optional[float] = None
    for step, batch in zip(range(start_step + 1, int(cfg["max_steps"]) + 1), loader):
        stage_module.train()
        out = stage_module(batch)
        if first_loss is None:
            first_loss = float(out["loss"].detach())
        accelerator.backward(out["loss"])
        lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step % int(cfg["log_every"]) == 0 or step == int(cfg["max_steps"]):
            terms = {k: v.detach() for k, v in out.items()}
            reduced = {k: float(accelerator.reduce(v, reduction="mean")) for k, v in terms.items()}
            if not all(math.isfinite(v) for v in reduced.values()):
                raise FloatingPointError(f"step {step}: non-finite loss {reduced}")
            if is_main:
                record = {"step": step, **reduced, "lr": lrs, "elapsed_s": round(time.time() - t0, 3)}
                with open(log_path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(record) + "\n")
                if bar is None:
                    print(f"step {step}/{cfg['max_steps']} loss {reduced['loss']:.6f} lr {lrs}")
                else:
                    bar.set_postfix(loss=f"{reduced['loss']:.4f}")
        if bar is not None:
            bar.update(1)
        if val_every and (step % val_every == 0 or step == int(cfg["max_steps"])):
            from accelerate.utils import gather_object

            acc = validate(accelerator.unwrap_model(stage_module), val_sets, model.config.image_mean,
                           model.config.image_std, int(cfg["batch_size"]), process_index=accelerator.process_index,
                           num_processes=accelerator.num_processes, gather=gather_object)
            if is_main:
                with open(log_path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps({"step": step, "val_2afc": acc}) + "\n")
                (bar.write if bar is not None else print)(
                    f"step {step} validation 2AFC: " + ", ".join(f"{k} {v:.4f}" for k, v in acc.items()))
            accelerator.wait_for_everyone()
        stopping = args.stop_at_step is not None and step >= args.stop_at_step
        if step % int(cfg["checkpoint_every"]) == 0 or step == int(cfg["max_steps"]) or stopping:
            ckpt = output_dir / "checkpoints" / f"checkpoint-{step}"
            accelerator.wait_for_everyone()
            accelerator.save_state(str(ckpt))
            if is_main:
                (ckpt / "trainer_state.json").write_text(json.dumps(
                    {"step": step, "stage": cfg["stage"], "max_steps": cfg["max_steps"], "seed": cfg["seed"]}) + "\n")
                _prune(output_dir, cfg.get("checkpoints_total_limit"))
            accelerator.wait_for_everyone()
        if stopping:
            if bar is not None:
                bar.close()
            if is_main:
                print(f"stopped at step {step} (--stop-at-step); continue with --resume")
            accelerator.end_training()
            return 0
    if bar is not None:
        bar.close()

    # Every process must end with the same parameters (gradients are all-reduced); record per-process
    # checksums so that a silent divergence (the official stage-1 bug, spec §6.12) cannot go unnoticed.
    from accelerate.utils import gather_object

    sums = gather_object([_checksum(accelerator.unwrap_model(stage_module).model)])
    first_losses = gather_object([first_loss])
    in_sync = all(s == sums[0] for s in sums)
    if not in_sync and is_main:
        logger.warning("parameters differ between processes after training: %s", sums)
    accelerator.wait_for_everyone()
    if is_main:
        from modeling_afine import AfineImageProcessor

        final = output_dir / "final"
        net = accelerator.unwrap_model(stage_module).model
        net.save_pretrained(str(final))
        AfineImageProcessor(image_mean=net.config.image_mean, image_std=net.config.image_std,
                            size_multiple=net.config.size_multiple).save_pretrained(str(final))
        (final / "training_info.json").write_text(json.dumps(
            {"stage": cfg["stage"], "steps": step, "init": str(cfg["init"]), "seed": seed,
             "num_processes": accelerator.num_processes, "processes_in_sync": in_sync,
             "parameter_checksums": sums, "first_step_loss_per_process": first_losses}, indent=2) + "\n")
        print(f"saved the stage-{cfg['stage']} model to {final}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0


def main(argv: Optional[Sequence[str]] = None, prog: str = "python -m training.train_afine") -> int:
    """Entry point; returns 0 on success, 1 on a failure (bad data/files), 2 on a usage error."""
    try:
        args = build_parser(prog).parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        return train(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
