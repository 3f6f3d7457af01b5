"""Train one stage of A-FINE with ``transformers.Trainer`` (spec/afine.md §2).

    accelerate launch -m training.train_afine --stage 1 --output_dir runs/stage1 \\
        --data diffiqa=/data/DiffIQA --data kadid10k=/data/KADID10K --data pipal=/data/PIPAL --data tid2013=/data/TID2013
    accelerate launch -m training.train_afine --stage 2 --init runs/stage1 --output_dir runs/stage2 --data ...
    accelerate launch -m training.train_afine --stage 3 --init runs/stage2 --output_dir runs/stage3 --data ...

Also runs as ``python -m training.train_afine ...`` / ``afine train stage ...`` (one process) and under
``torchrun``. Every ``TrainingArguments`` flag works (``--report_to tensorboard``, ``--gradient_accumulation_steps``,
``--gradient_checkpointing``, ``--bf16``, ``--push_to_hub``, ``--save_total_limit``, ...); the stage defaults live in
``training/configs/stage{1,2,3}.json`` (the official ymls). See docs/training.md.

``--output_dir`` receives, as with any ``Trainer``: ``checkpoint-{step}/`` (resumable with
``--resume_from_checkpoint PATH|latest``) and at the end the model itself - an A-FINE model folder with the code
and ``auto_map`` (``AutoModel.from_pretrained(dir, trust_remote_code=True)`` works without this package), a
model card (``README.md``), ``training_info.json``; plus ``log.jsonl`` and the trackers' logs.

Exit codes: 0 success, 1 failure (bad data, missing files), 2 usage error.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path
from typing import Optional, Sequence

from .arguments import CONFIG_DIR, ConfigError, load_stage_config, parse_args, resolve_config

__all__ = ["main", "train", "build_trainer", "parse_args", "load_stage_config", "resolve_config", "build_initial_model", "latest_checkpoint",
           "ConfigError", "CONFIG_DIR", "NATURAL_FIT_FILE"]

logger = logging.getLogger("training.train_afine")

#: Written by stage 1 next to the model when it fitted the naturalness calibration on PIPAL.
NATURAL_FIT_FILE = "natural_calibration_fit.json"


# ----------------------------------------------------------------------------------------------- model


def build_initial_model(init: str, stage: int):
    """The model a stage starts from.

    * an A-FINE model directory (``config.json`` with ``model_type: afine``; the previous stage's output);
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


def _stage3_natural_calibration(model, choice: Optional[str], init: str) -> str:
    """Where stage 3's naturalness calibration starts (spec §8: the official flow refits it after stage 1)."""
    from .calibration import apply_fit, read_fit

    if choice == "released":
        from modeling_afine import AfineConfig

        released = AfineConfig()
        apply_fit(model, {"natural_center": released.natural_center_init, "natural_scale": released.natural_scale_init})
        model.config.natural_calibration_fit = None
        return "the released constants (--natural_calibration released)"
    if choice:
        fit = read_fit(choice)
        if "natural_center" not in fit or "natural_scale" not in fit:
            raise ConfigError(f"{choice}: no natural_center / natural_scale (write it with "
                              "'afine train fit-calibration naturalness')")
        apply_fit(model, fit)
        return f"the fit in {choice}"
    if getattr(model.config, "natural_calibration_fit", None):
        return f"the fit recorded in {init}"
    raise ConfigError(
        f"{init} has no naturalness-calibration fit. The official flow starts stage 3 from a fit on PIPAL train made "
        "after stage 1 (TrainAFINE/README.md, fit_beta_AFINE_Stage1.py). Stage 1 runs it at its end when it knows "
        f"the PIPAL folder; otherwise run: afine train fit-calibration naturalness --model {init} "
        f"--data-dir /data/PIPAL --write-model {init}  (or pass --natural_calibration FIT.json, or "
        "--natural_calibration released to start from the released constants 4.9592 / 21.5968 on purpose)")


# ----------------------------------------------------------------------------------------------- checkpoints


def _checkpoint_step(path: Path) -> int:
    m = re.fullmatch(r"checkpoint-(\d+)", path.name)
    return int(m.group(1)) if m else -1


def latest_checkpoint(output_dir) -> Optional[Path]:
    """The newest complete ``checkpoint-{step}`` of a run (one with ``trainer_state.json``, written last)."""
    root = Path(output_dir)
    if not root.is_dir():
        return None
    done = [p for p in root.iterdir() if _checkpoint_step(p) >= 0 and (p / "trainer_state.json").is_file()]
    return max(done, key=_checkpoint_step) if done else None


def _resolve_resume(value: Optional[str], output_dir: Path, is_main: bool) -> Optional[Path]:
    if value is None or str(value).lower() in ("", "false", "none"):
        return None
    if str(value).lower() in ("latest", "true"):
        found = latest_checkpoint(output_dir)
        if found is None and is_main:
            print(f"no checkpoint in {output_dir}; starting from step 0")
        return found
    path = Path(value)
    if not (path / "trainer_state.json").is_file():
        raise FileNotFoundError(f"{path}: not a complete checkpoint (no trainer_state.json)")
    return path


def _check_resume(checkpoint: Path, record: dict) -> int:
    from .trainer import RUN_FILE

    run = checkpoint / RUN_FILE
    saved = json.loads(run.read_text()) if run.is_file() else {}
    for key, value in record.items():
        if key in saved and saved[key] != value:
            raise ConfigError(f"{checkpoint}: the checkpoint was made with {key}={saved[key]}, this run has "
                              f"{key}={value}; resume with the same settings (they fix the schedule and the data order)")
    return int(json.loads((checkpoint / "trainer_state.json").read_text())["global_step"])


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint a run resumes from (they will be written again)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if int(json.loads(line).get("step", 0)) <= step:
                keep.append(line)
        except (ValueError, AttributeError):
            continue  # a torn last line
    path.write_text("".join(x + "\n" for x in keep), encoding="utf-8")


# ----------------------------------------------------------------------------------------------- data


def load_triplets(cfg: dict, cache_dir: Optional[str] = None, notify=print) -> list:
    from .data import triplets_from_dataset, triplets_from_txt

    out = []
    for d in cfg["data"]:
        if "dataset" in d:
            out += triplets_from_dataset(d["dataset"], d["data_dir"], config=d.get("config", "auto"),
                                         split=d.get("split", "train"), seed=int(d.get("seed", cfg["seed"])),
                                         cache_dir=cache_dir, notify=notify)
        else:
            out += triplets_from_txt(d["triplets"], d["image_dir"])
    return out


def load_validation_sets(cfg: dict, cache_dir: Optional[str] = None, notify=print) -> list:
    """``[(name, triplets)]``; a configured set whose split is missing or empty is an error naming it."""
    from .data import resolve_triplet_config, triplets_from_dataset, triplets_from_txt

    sets = []
    for d in cfg["validation"]["data"]:
        if "dataset" in d:
            split = d.get("split", "validation")
            config, _ = resolve_triplet_config(d["dataset"], d["data_dir"], d.get("config", "auto"), split)
            sets.append((f"{d['dataset']}/{config}/{split}",
                         triplets_from_dataset(d["dataset"], d["data_dir"], config=d.get("config", "auto"), split=split,
                                               seed=int(d.get("seed", cfg["seed"])), cache_dir=cache_dir, notify=notify)))
        else:
            sets.append((Path(d["triplets"]).stem, triplets_from_txt(d["triplets"], d["image_dir"])))
    return sets


def _checksum(model) -> list[float]:
    """Per-parameter float64 (sum, sum of squares) of the trainable parameters: equal across in-sync processes."""
    import torch

    out = []
    with torch.no_grad():
        for _, p in sorted((n, p) for n, p in model.named_parameters() if p.requires_grad):
            d = p.detach().double()
            out += [float(d.sum()), float((d * d).sum())]
    return out


def _pipal_folder(cfg: dict, explicit: Optional[str]) -> Optional[str]:
    if explicit:
        return explicit
    return next((d["data_dir"] for d in cfg["data"] if str(d.get("dataset", "")).lower() == "pipal"), None)


# ----------------------------------------------------------------------------------------------- run


def build_trainer(parsed, callbacks=None):
    """``(trainer, config, resume checkpoint or None)`` for a parsed command line; loads data and the model."""
    from transformers.trainer_utils import set_seed

    from .data import TripletDataset
    from .trainer import LOG_FILE, AfineStageTrainer

    cfg = resolve_config(parsed)
    sa, args = parsed.stage, parsed.training
    output_dir = Path(args.output_dir)
    is_main = args.process_index == 0
    say = print if is_main else (lambda *a, **k: None)
    resume = _resolve_resume(args.resume_from_checkpoint, output_dir, is_main)

    # The main process prepares the datasets cache first; the others then read it (no concurrent writes). On
    # shared storage that is the main process of all nodes; with --save_on_each_node (node-local storage) the
    # main process of each node.
    with args.main_process_first(local=bool(args.save_on_each_node), desc="dataset preparation"):
        triplets = load_triplets(cfg, sa.cache_dir, notify=say)
        val_sets = load_validation_sets(cfg, sa.cache_dir, notify=say) if cfg["validation"]["every"] else []
    if cfg["validation"]["skipped"]:
        say(f"validation sources without a folder are skipped: {', '.join(cfg['validation']['skipped'])} "
            "(give --data NAME=DIR to include them)")
    if not val_sets:
        from transformers.trainer_utils import IntervalStrategy

        args.eval_strategy = IntervalStrategy.NO
    set_seed(int(cfg["seed"]))  # the random heads of a fresh model
    model = build_initial_model(str(cfg["init"]), cfg["stage"])
    if cfg["stage"] == 3:
        say(f"stage 3: naturalness calibration starts from {_stage3_natural_calibration(model, sa.natural_calibration, cfg['init'])}")
    elif sa.natural_calibration:
        raise ConfigError("--natural_calibration applies to stage 3 only")
    model.float()
    dataset = TripletDataset(triplets, image_mean=model.config.image_mean, image_std=model.config.image_std,
                             hflip=bool(cfg["augment"].get("hflip", True)), rot=bool(cfg["augment"].get("rot", True)),
                             seed=int(cfg["seed"]))
    trainer = AfineStageTrainer(model, args, stage_config=cfg, train_dataset=dataset, validation_sets=val_sets,
                                stop_at_step=sa.stop_at_step, callbacks=callbacks)
    step = _check_resume(resume, trainer.run_record()) if resume is not None else 0
    if is_main:  # a fresh run starts a fresh log; a resumed one drops what came after its checkpoint
        _truncate_log(output_dir / LOG_FILE, step)
    if resume is not None:
        say(f"resuming from {resume} at step {step}")
    if is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "afine_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        say(f"stage {cfg['stage']}: {len(dataset)} triplets, {args.world_size} process(es) x {cfg['batch_size']} x "
            f"{args.gradient_accumulation_steps} accumulation per step, {cfg['max_steps']} steps, trainable "
            f"{sum(p.numel() for ps in trainer.param_groups.values() for p in ps)} parameters in {list(trainer.param_groups)}")
    return trainer, cfg, resume


def train(parsed, callbacks=None) -> int:
    """Run one stage (all processes); export, checksums and the stage-1 calibration fit at the end."""
    from accelerate.utils import gather_object

    trainer, cfg, resume = build_trainer(parsed, callbacks)
    sa, args = parsed.stage, parsed.training
    output_dir = Path(args.output_dir)
    is_main = args.process_index == 0
    say = print if is_main else (lambda *a, **k: None)
    trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    steps = trainer.state.global_step
    if steps < int(cfg["max_steps"]):
        say(f"stopped at step {steps} (--stop_at_step); continue with --resume_from_checkpoint latest")
        return 0

    # Every process must end with the same parameters (gradients are all-reduced); record per-process
    # checksums so that a silent divergence (the official stage-1 bug, spec §6.12) cannot go unnoticed.
    net = trainer.afine_model
    sums = gather_object([_checksum(net)])
    first_losses = gather_object([trainer.first_step_loss])
    in_sync = all(s == sums[0] for s in sums)
    if not in_sync and is_main:
        logger.warning("parameters differ between processes after training: %s", sums)
    trainer.save_model()  # output_dir: model + code + auto_map (main process)
    if not is_main:
        return 0
    info = {"stage": cfg["stage"], "steps": steps, "init": str(cfg["init"]), "seed": int(cfg["seed"]),
            "num_processes": args.world_size, "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "processes_in_sync": in_sync, "parameter_checksums": sums, "first_step_loss_per_process": first_losses,
            "validation_2afc": trainer.last_validation}
    if cfg["stage"] == 1 and sa.fit_natural_calibration:
        info["natural_calibration_fit"] = _fit_natural_calibration(trainer, cfg, sa, output_dir)
    (output_dir / "training_info.json").write_text(json.dumps(info, indent=2) + "\n")
    trainer.create_model_card()
    if args.push_to_hub:
        trainer.push_to_hub(commit_message=f"A-FINE stage {cfg['stage']}, step {steps}")
    say(f"saved the stage-{cfg['stage']} model to {output_dir}")
    return 0


def _fit_natural_calibration(trainer, cfg: dict, sa, output_dir: Path) -> Optional[dict]:
    """Stage 1's end (official flow): fit the naturalness calibration on PIPAL train, write it into the model."""
    from .calibration import apply_fit, fit_calibration
    from .export import save_model_folder

    pipal = _pipal_folder(cfg, sa.natural_calibration_data)
    if pipal is None:
        print("notice: no PIPAL folder (--data pipal=DIR or --natural_calibration_data DIR), so the naturalness "
              "calibration was not fitted; before stage 3 run: afine train fit-calibration naturalness "
              f"--model {output_dir} --data-dir /data/PIPAL --write-model {output_dir}")
        return None
    print(f"fitting the naturalness calibration on PIPAL train ({pipal}) for stage 3 ...")
    fit = fit_calibration("naturalness", str(output_dir), "pipal", pipal, device=str(trainer.args.device), batch_size=int(trainer.args.per_device_eval_batch_size),
                          cache_dir=sa.cache_dir, progress=not trainer.args.disable_tqdm)
    (output_dir / NATURAL_FIT_FILE).write_text(json.dumps(fit, indent=2) + "\n")
    net = trainer.afine_model
    apply_fit(net, fit)
    save_model_folder(net, output_dir)
    print(f"naturalness calibration: center {fit['natural_center']:.4f}, scale {fit['natural_scale']:.4f} "
          f"(rmse {fit['rmse']:.4f}, n {fit['n']}) -> {output_dir}")
    return fit


def main(argv: Optional[Sequence[str]] = None, prog: str = "python -m training.train_afine") -> int:
    """Entry point; returns 0 on success, 1 on a failure (bad data/files), 2 on a usage error."""
    try:
        try:
            parsed = parse_args(argv, prog=prog)
        except SystemExit as exc:
            return int(exc.code or 0)
        return train(parsed)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
