"""The A-FINE stages on :class:`transformers.Trainer`: only what the official recipe needs is overridden.

* :meth:`AfineStageTrainer.create_optimizer` - AdamW with one parameter group per trained module, each at its own
  learning rate (the official code: one AdamW per module, same settings - equivalent), weight decay on every
  parameter of the group;
* :meth:`~AfineStageTrainer.create_scheduler` - the official cosine annealing with restarts, scaled to ``max_steps``;
* :meth:`~AfineStageTrainer.get_train_dataloader` - the deterministic, resumable, process-sharded triplet sampler
  (:class:`training.data.StepBatchSampler`) and collator;
* :meth:`~AfineStageTrainer.compute_loss` - the stage loss, normalised by the number of triplets of the whole
  accumulated batch on this process (``loss_is_scaled_for_ga``): k micro-batches give the update of one batch
  of k times the size;
* :meth:`~AfineStageTrainer.evaluate` - the official 2AFC validation (delta 0), sharded over processes;
* :meth:`~AfineStageTrainer._save` / :meth:`~AfineStageTrainer._load_from_checkpoint` - checkpoints and the final
  export are A-FINE model folders with the code and ``auto_map`` (loadable with ``trust_remote_code``).

Everything else - devices, DDP, mixed precision, gradient accumulation and checkpointing, trackers
(``--report_to``), checkpoint rotation, resuming (optimizer, scheduler, RNG, data position), ``push_to_hub`` -
is the library's.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Optional

import torch
from transformers import Trainer, TrainerCallback

from .data import TripletDataset, collate_triplets
from .export import save_model_folder, write_model_card
from .schedule import build_cosine_restart_scheduler, scale_periods
from .stages import StageModule, set_trainable

__all__ = ["AfineStageTrainer", "validate", "RUN_FILE", "LOG_FILE"]

#: Written into every checkpoint and the output: what a resumed run must agree with.
RUN_FILE = "afine_run.json"
#: One JSON object per logged step and per validation, appended by the main process.
LOG_FILE = "log.jsonl"


def validate(stage_module: StageModule, sets, image_mean, image_std, batch_size: int, *, process_index: int = 0,
             num_processes: int = 1, gather=None) -> dict[str, float]:
    """Official validation: 2AFC accuracy at delta 0 of the stage's scores of (img1, img2) against g12, per set.

    With several processes each scores every ``num_processes``-th triplet and ``gather`` (e.g.
    ``accelerate.utils.gather_object``) collects the scores; every process must call it.
    """
    from dataset_scripts.agreement import two_afc_accuracy

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


class _StageFlow(TrainerCallback):
    """Log at the last step (as the pre-Trainer loop did) and stop after ``--stop_at_step`` with a checkpoint."""

    def __init__(self, stop_at_step: Optional[int]) -> None:
        self.stop_at_step = stop_at_step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_log = True
        if self.stop_at_step is not None and state.global_step >= self.stop_at_step:
            control.should_log = control.should_save = control.should_training_stop = True
        return control


class AfineStageTrainer(Trainer):
    """``Trainer`` for one A-FINE stage. ``stage_config`` is :func:`training.arguments.resolve_config`'s result."""

    loss_is_scaled_for_ga = True

    def __init__(self, model, args, *, stage_config: dict, train_dataset: TripletDataset,
                 validation_sets: Optional[list] = None, stop_at_step: Optional[int] = None, **kwargs) -> None:
        from modeling_afine import AfineImageProcessor

        self.stage_config = stage_config
        self.validation_sets = list(validation_sets or [])
        self.param_groups = set_trainable(model, tuple(stage_config["lr"]))
        stage_module = StageModule(model, stage_config["stage"], group_by_size=bool(stage_config.get("group_by_size", True)))
        eval_dataset = {name: TripletDataset(t, image_mean=model.config.image_mean, image_std=model.config.image_std,
                                             hflip=False, rot=False) for name, t in self.validation_sets} or None
        processor = AfineImageProcessor.for_config(model.config)
        callbacks = list(kwargs.pop("callbacks", None) or []) + [_StageFlow(stop_at_step)]
        if args.n_gpu > 1:  # torch.nn.DataParallel cannot split lists of native-size images; use DDP launchers
            args._n_gpu = 1
        super().__init__(model=stage_module, args=args, data_collator=collate_triplets, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processor, callbacks=callbacks, **kwargs)
        self._terms: dict[str, torch.Tensor] = {}
        self._terms_steps = 0
        self._step_lrs: dict[str, float] = {}
        self._lrs_step = -1
        self.first_step_loss: Optional[float] = None
        self._first_step_acc: Optional[torch.Tensor] = None
        self._t0 = time.time()
        self.last_validation: dict[str, float] = {}

    @property
    def afine_model(self):
        """The ``AfineModel`` being trained."""
        return self.accelerator.unwrap_model(self.model).model

    # ----------------------------------------------------------------------------------- optimizer, schedule

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            a, lr = self.args, self.stage_config["lr"]
            self.optimizer = torch.optim.AdamW(
                [{"params": params, "lr": float(lr[name]), "name": name} for name, params in self.param_groups.items()],
                betas=(float(a.adam_beta1), float(a.adam_beta2)), weight_decay=float(a.weight_decay),
                eps=float(a.adam_epsilon))
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            sched = self.stage_config["scheduler"]
            periods = scale_periods(sched["periods"], int(self.args.max_steps))
            self.lr_scheduler = build_cosine_restart_scheduler(optimizer or self.optimizer, periods,
                                                               sched["restart_weights"], float(sched["eta_min"]))
            self._created_lr_scheduler = True
        return self.lr_scheduler

    # ----------------------------------------------------------------------------------- data

    def get_train_dataloader(self):
        from .data import StepBatchSampler

        sampler = StepBatchSampler(len(self.train_dataset), self.args.per_device_train_batch_size,
                                   max_steps=int(self.args.max_steps), seed=int(self.stage_config["seed"]),
                                   num_processes=self.args.world_size, process_index=self.args.process_index,
                                   accumulation_steps=self.args.gradient_accumulation_steps)
        workers = int(self.args.dataloader_num_workers)
        return torch.utils.data.DataLoader(self.train_dataset, batch_sampler=sampler, collate_fn=collate_triplets,
                                           num_workers=workers, pin_memory=bool(self.args.dataloader_pin_memory),
                                           persistent_workers=bool(self.args.dataloader_persistent_workers) and workers > 0)

    def _get_num_items_in_batch(self, batch_samples: list, device) -> int:
        # Triplets of the accumulated batch on this process. Every process has the same number (whole global
        # batches only), so DDP's gradient averaging completes the mean over the global effective batch.
        return sum(len(b["img1"]) for b in batch_samples)

    # ----------------------------------------------------------------------------------- loss, logging

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        if self._lrs_step != self.state.global_step:  # the learning rates this optimizer step runs at
            self._step_lrs = {g["name"]: float(g["lr"]) for g in self.optimizer.param_groups}
            self._lrs_step = self.state.global_step
            self._terms_steps += 1
        out = model(inputs, num_items_in_batch=num_items_in_batch)
        for key, value in out.items():
            self._terms[key] = self._terms.get(key, 0) + value.detach()
        if self.state.global_step == self._initial_global_step and model.training:
            loss = out["loss"].detach()
            self._first_step_acc = loss if self._first_step_acc is None else self._first_step_acc + loss
        return (out["loss"], out) if return_outputs else out["loss"]

    def log(self, logs: dict[str, float], start_time: Optional[float] = None) -> None:
        if "loss" in logs and self._terms:  # a training log: add the loss terms and per-module learning rates
            if self.first_step_loss is None and self._first_step_acc is not None:
                self.first_step_loss = float(self._first_step_acc)
            names = sorted(self._terms)
            stacked = torch.stack([torch.as_tensor(self._terms[n], device=self.args.device, dtype=torch.float32)
                                   for n in names]) / max(1, self._terms_steps)
            reduced = dict(zip(names, self.accelerator.reduce(stacked, reduction="mean").tolist()))
            self._terms, self._terms_steps = {}, 0
            if not all(math.isfinite(v) for v in reduced.values()):
                raise FloatingPointError(f"step {self.state.global_step}: non-finite loss {reduced}")
            logs.update({k: v for k, v in reduced.items() if k != "loss"})
            logs.update({f"learning_rate/{k}": v for k, v in self._step_lrs.items()})
            if self.args.should_save:
                record = {"step": self.state.global_step, **reduced, "lr": dict(self._step_lrs)}
                if logs.get("grad_norm") is not None:
                    record["grad_norm"] = logs["grad_norm"]
                record["elapsed_s"] = round(time.time() - self._t0, 3)
                self._append_log(record)
        super().log(logs, start_time)

    def _append_log(self, record: dict) -> None:
        path = Path(self.args.output_dir) / LOG_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    # ----------------------------------------------------------------------------------- validation

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        from accelerate.utils import gather_object

        net = self.afine_model
        acc = validate(self.accelerator.unwrap_model(self.model), self.validation_sets, net.config.image_mean,
                       net.config.image_std, int(self.args.per_device_eval_batch_size),
                       process_index=self.args.process_index, num_processes=self.args.world_size, gather=gather_object)
        self.last_validation = acc
        metrics = {f"{metric_key_prefix}_2afc/{name}": value for name, value in acc.items()}
        if acc:
            metrics[f"{metric_key_prefix}_2afc"] = sum(acc.values()) / len(acc)
        if self.args.should_save:
            self._append_log({"step": self.state.global_step, "val_2afc": acc})
        self.log(dict(metrics))
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    # ----------------------------------------------------------------------------------- saving, loading

    def run_record(self) -> dict:
        """What a resumed run must agree with (it fixes the schedule and the data of every step)."""
        c, a = self.stage_config, self.args
        return {"stage": c["stage"], "max_steps": int(a.max_steps), "seed": int(c["seed"]),
                "global_batch_size": int(a.per_device_train_batch_size) * int(a.gradient_accumulation_steps)
                * int(a.world_size)}

    def _save(self, output_dir: Optional[str] = None, state_dict=None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        if state_dict is not None:  # gathered from the prepared StageModule (DeepSpeed / FSDP)
            state_dict = {k[len("model."):]: v for k, v in state_dict.items() if k.startswith("model.")}
        save_model_folder(self.afine_model, output_dir, state_dict=state_dict)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))
        Path(output_dir, RUN_FILE).write_text(json.dumps({**self.run_record(), "config": self.stage_config},
                                                         indent=2) + "\n")

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        import safetensors.torch

        path = Path(resume_from_checkpoint) / "model.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"{resume_from_checkpoint}: no model.safetensors (not an A-FINE stage checkpoint)")
        target = self.accelerator.unwrap_model(model if model is not None else self.model).model
        target.load_state_dict(safetensors.torch.load_file(str(path), device="cpu"), strict=True)

    def _load_best_model(self) -> None:  # --load_best_model_at_end (e.g. --metric_for_best_model 2afc)
        self._load_from_checkpoint(self.state.best_model_checkpoint)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        # The library copies config + weights into output_dir before uploading it; the code files that
        # config.json's auto_map points to and the processor config must travel with them.
        if self.args.should_save:
            for src in [*Path(checkpoint_folder).glob("*.py"), Path(checkpoint_folder) / "preprocessor_config.json"]:
                if src.is_file():
                    shutil.copy(src, Path(self.args.output_dir) / src.name)
        super()._push_from_checkpoint(checkpoint_folder)

    def create_model_card(self, **kwargs: Any) -> None:
        if not self.is_world_process_zero():
            return
        a = self.args
        training = {"steps": self.state.global_step, "gradient_accumulation_steps": a.gradient_accumulation_steps,
                    "num_processes": a.world_size,
                    "global_batch_size": a.per_device_train_batch_size * a.gradient_accumulation_steps * a.world_size}
        write_model_card(a.output_dir, stage=self.stage_config["stage"], config=self.stage_config, training=training,
                         validation=self.last_validation, repo_id=a.hub_model_id)
