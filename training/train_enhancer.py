"""Train the A-FINE diffusion enhancer (PASD) with accelerate.

    accelerate launch -m training.train_enhancer --pretrained-model <SD-1.5 dir or Hub id> \\
        --train-data-dir <images> [--train-data-dir <more images>] --output-dir runs/enhancer

What is trained (spec/enhancer.md §4): Stable Diffusion (VAE, CLIP text encoder, UNet) stays frozen;
the whole ControlNet (initialised from the SD UNet encoder, or from ``--enhancer``) and the UNet's 12
pixel-aware cross-attention blocks are trained with the epsilon MSE loss, empty captions, AdamW
(lr 5e-5, weight decay 1e-2), gradient clipping at 1.0 and a constant learning rate. The condition
image is the weakly degraded image or the GT-only down/up blur with p 0.5 each.

Outputs in ``--output-dir``: ``checkpoint-{step}/`` (accelerate state plus ``unet/`` and
``controlnet/`` in the released format) every ``--checkpointing-steps``; at the end ``unet/``,
``controlnet/`` and a complete ``pipeline/`` (:class:`~pipelines.EnhancerPipeline`, loadable with
``EnhancerPipeline.from_pretrained``). ``--resume-from-checkpoint latest`` continues a run.

Update size: the official script nests ``accelerator.accumulate(controlnet)`` and
``accelerator.accumulate(unet)``, which advances accelerate's counter twice per batch, so with its
``--gradient_accumulation_steps=4`` the optimiser stepped every 2 batches: 4 images x 2 batches x 8
GPUs = 64 images per update (not 128). Here one ``accumulate(controlnet, unet)`` counts once per
batch, so the default ``--gradient-accumulation-steps 2`` gives the released recipe's update size.

Differences from the official script: the data loader is sharded across processes by accelerate
(the official one was not prepared, so each GPU walked the whole dataset) and is shuffled each epoch;
the ControlNet's gradients are all-reduced across GPUs (in the official script the outer
``accumulate(controlnet)`` was always entered on an odd count, never a sync step, so the ControlNet
stayed in ``no_sync``: every GPU trained its own copy and only rank 0's was saved).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import shutil
import sys
from pathlib import Path

__all__ = ["parse_args", "main"]

logger = logging.getLogger("train_enhancer")


def _opt(p, name: str, **kw):
    """Register ``--a-b`` with the diffusers-style alias ``--a_b``."""
    names = [name] + (["--" + name[2:].replace("-", "_")] if "-" in name[2:] else [])
    p.add_argument(*names, **kw)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="train_enhancer", description="Train the A-FINE diffusion enhancer (PASD).")
    _opt(p, "--pretrained-model", required=True, help="SD-1.5 diffusers directory or Hub id")
    _opt(p, "--enhancer", default=None, help="start from these unet/ and controlnet/ folders (e.g. the released weights)")
    _opt(p, "--revision", default=None)
    _opt(p, "--train-data-dir", action="append", required=True, help="folder of training images (repeatable)")
    _opt(p, "--output-dir", required=True)
    _opt(p, "--resolution", type=int, default=512)
    _opt(p, "--train-batch-size", type=int, default=4, help="per device")
    _opt(p, "--gradient-accumulation-steps", type=int, default=2,
         help="batches per optimiser update (default 2: with batch 4 on 8 GPUs, the 64 images per update of "
              "the released run, whose nested accumulate() stepped every 2 batches despite its setting of 4)")
    _opt(p, "--num-train-epochs", type=int, default=10)
    _opt(p, "--max-train-steps", type=int, default=None, help="overrides --num-train-epochs")
    _opt(p, "--learning-rate", type=float, default=5e-5)
    _opt(p, "--lr-scheduler", default="constant")
    _opt(p, "--lr-warmup-steps", type=int, default=500)
    _opt(p, "--adam-beta1", type=float, default=0.9)
    _opt(p, "--adam-beta2", type=float, default=0.999)
    _opt(p, "--adam-weight-decay", type=float, default=1e-2)
    _opt(p, "--adam-epsilon", type=float, default=1e-8)
    _opt(p, "--max-grad-norm", type=float, default=1.0)
    _opt(p, "--gt-condition-prob", type=float, default=0.5, help="p of the GT-only blur as condition (else LQ)")
    _opt(p, "--checkpointing-steps", type=int, default=10000)
    _opt(p, "--checkpoints-total-limit", type=int, default=None)
    _opt(p, "--resume-from-checkpoint", default=None, help='a checkpoint folder or "latest"')
    _opt(p, "--mixed-precision", default=None, choices=["no", "fp16", "bf16"], help="default: accelerate config (official: no)")
    _opt(p, "--gradient-checkpointing", action="store_true")
    _opt(p, "--seed", type=int, default=None)
    _opt(p, "--dataloader-num-workers", type=int, default=0)
    _opt(p, "--report-to", default="none", help="none, tensorboard, wandb, all (as accelerate's log_with)")
    _opt(p, "--logging-steps", type=int, default=10)
    _opt(p, "--no-export", action="store_true", help="do not write unet/, controlnet/, pipeline/ at the end")
    _opt(p, "--cpu", action="store_true", help="train on CPU even if a GPU is present")
    args = p.parse_args(argv)
    if args.resolution % 8:
        p.error("--resolution must be a multiple of 8")
    if args.checkpointing_steps < 1 or args.train_batch_size < 1 or args.gradient_accumulation_steps < 1:
        p.error("--checkpointing-steps, --train-batch-size and --gradient-accumulation-steps must be >= 1")
    return args


def _latest_checkpoint(output_dir: Path) -> Path | None:
    ckpts = [d for d in output_dir.glob("checkpoint-*") if d.is_dir() and re.fullmatch(r"checkpoint-\d+", d.name)]
    return max(ckpts, key=lambda d: int(d.name.split("-")[1]), default=None)


def _load_models(args):
    from diffusers import AutoencoderKL, ControlNetModel, DDPMScheduler
    from transformers import CLIPTextModel, CLIPTokenizer

    from pipelines.unet_paca import PASDUNet2DConditionModel

    base = args.pretrained_model
    kw = {"revision": args.revision} if args.revision else {}
    try:
        tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer", **kw)
        text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder", **kw)
        vae = AutoencoderKL.from_pretrained(base, subfolder="vae", **kw)
        noise_scheduler = DDPMScheduler.from_pretrained(base, subfolder="scheduler", **kw)
        if args.enhancer:
            unet = PASDUNet2DConditionModel.from_pretrained(args.enhancer, subfolder="unet")
            controlnet = ControlNetModel.from_pretrained(args.enhancer, subfolder="controlnet")
        else:
            # SD weights + freshly initialised PACA blocks; ControlNet copied from the UNet encoder
            unet = PASDUNet2DConditionModel.from_pretrained(base, subfolder="unet", **kw)
            controlnet = ControlNetModel.from_unet(unet)
    except (OSError, ValueError) as err:
        raise OSError(f"could not load the models: {err}") from err
    return tokenizer, text_encoder, vae, noise_scheduler, unet, controlnet


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm

    from pipelines.noising import make_inference_scheduler
    from pipelines.pipeline_enhancer import EnhancerPipeline
    from pipelines.unet_paca import PASDUNet2DConditionModel

    from .enhancer_data import EnhancerTrainDataset, collate

    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        cpu=args.cpu,
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if not accelerator.is_main_process:
        logger.setLevel(logging.WARNING)
    if args.seed is not None:
        set_seed(args.seed)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)

    try:
        tokenizer, text_encoder, vae, noise_scheduler, unet, controlnet = _load_models(args)
    except OSError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1

    # --- what is trained: the ControlNet and the PACA blocks only
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    unet.requires_grad_(False)
    for p in unet.paca_parameters():
        p.requires_grad_(True)
    controlnet.requires_grad_(True)
    controlnet.train()
    unet.train()
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        controlnet.enable_gradient_checkpointing()

    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    if weight_dtype == torch.float32:
        vae.to(accelerator.device)
    else:
        vae.to(accelerator.device, dtype=weight_dtype)
    text_encoder.to(accelerator.device, dtype=weight_dtype)

    # --- checkpoints hold unet/ and controlnet/ in the released (save_pretrained) format
    def save_hook(models, weights, out_dir):
        if accelerator.is_main_process:
            for model in models:
                model = accelerator.unwrap_model(model)
                sub = "unet" if isinstance(model, PASDUNet2DConditionModel) else "controlnet"
                model.save_pretrained(os.path.join(out_dir, sub))
        while weights:
            weights.pop()

    def load_hook(models, in_dir):
        from diffusers import ControlNetModel

        while models:
            model = accelerator.unwrap_model(models.pop())
            if isinstance(model, PASDUNet2DConditionModel):
                loaded = PASDUNet2DConditionModel.from_pretrained(in_dir, subfolder="unet")
            else:
                loaded = ControlNetModel.from_pretrained(in_dir, subfolder="controlnet")
            model.load_state_dict(loaded.state_dict())
            del loaded

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)

    params = [p for p in list(controlnet.parameters()) + list(unet.parameters()) if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay, eps=args.adam_epsilon,
    )
    try:
        dataset = EnhancerTrainDataset(args.train_data_dir, tokenizer, resolution=args.resolution,
                                       gt_condition_prob=args.gt_condition_prob)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    dataloader = torch.utils.data.DataLoader(
        dataset, batch_size=args.train_batch_size, shuffle=True, collate_fn=collate,
        num_workers=args.dataloader_num_workers, drop_last=False,
    )
    updates_per_epoch = math.ceil(math.ceil(len(dataloader) / accelerator.num_processes) / args.gradient_accumulation_steps)
    max_steps = args.max_train_steps or args.num_train_epochs * updates_per_epoch
    lr_scheduler = get_scheduler(
        args.lr_scheduler, optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=max_steps * accelerator.num_processes,
    )
    controlnet, unet, optimizer, dataloader, lr_scheduler = accelerator.prepare(
        controlnet, unet, optimizer, dataloader, lr_scheduler
    )
    updates_per_epoch = math.ceil(len(dataloader) / args.gradient_accumulation_steps)
    num_epochs = math.ceil(max_steps / updates_per_epoch)
    if accelerator.is_main_process:
        accelerator.init_trackers("enhancer", config={k: str(v) for k, v in vars(args).items()})

    global_step, first_epoch, resume_batches = 0, 0, 0
    if args.resume_from_checkpoint:
        path = (_latest_checkpoint(output_dir) if args.resume_from_checkpoint == "latest"
                else Path(args.resume_from_checkpoint))
        if path is None or not path.is_dir():
            logger.warning("no checkpoint %r found; starting a new run", args.resume_from_checkpoint)
        else:
            accelerator.load_state(str(path))
            global_step = int(path.name.split("-")[1])
            first_epoch = global_step // updates_per_epoch
            resume_batches = (global_step % updates_per_epoch) * args.gradient_accumulation_steps
            logger.info("resumed from %s at step %d", path, global_step)

    total_batch = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info("%d images, %d steps (batch %d in total), %d trainable parameters",
                len(dataset), max_steps, total_batch, sum(p.numel() for p in params))
    progress = tqdm(range(max_steps), initial=global_step, desc="steps", disable=not accelerator.is_local_main_process)
    scaling = vae.config.scaling_factor
    prediction_type = noise_scheduler.config.prediction_type

    def checkpoint():
        if not accelerator.is_main_process:
            return
        if args.checkpoints_total_limit is not None:
            ckpts = sorted((d for d in output_dir.glob("checkpoint-*") if d.is_dir()), key=lambda d: int(d.name.split("-")[1]))
            for old in ckpts[: max(0, len(ckpts) - args.checkpoints_total_limit + 1)]:
                shutil.rmtree(old)
        accelerator.save_state(str(output_dir / f"checkpoint-{global_step}"))
        logger.info("saved checkpoint-%d", global_step)

    running = 0.0
    for epoch in range(first_epoch, num_epochs):
        if global_step >= max_steps:
            break
        loader = dataloader
        if epoch == first_epoch and resume_batches:
            loader = accelerator.skip_first_batches(dataloader, resume_batches)
        for batch in loader:
            with accelerator.accumulate(controlnet, unet):
                with torch.no_grad():
                    latents = vae.encode(batch["pixel_values"].to(weight_dtype)).latent_dist.sample() * scaling
                    ehs = text_encoder(batch["input_ids"])[0]
                noise = torch.randn_like(latents)
                t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), device=latents.device)
                noisy = noise_scheduler.add_noise(latents, noise, t)
                cond = batch["conditioning_pixel_values"].to(dtype=weight_dtype)
                down, mid = controlnet(noisy, t, encoder_hidden_states=ehs, controlnet_cond=cond, return_dict=False)
                pred = unet(
                    noisy, t, encoder_hidden_states=ehs,
                    down_block_additional_residuals=[d.to(weight_dtype) for d in down],
                    mid_block_additional_residual=mid.to(weight_dtype),
                ).sample
                target = noise if prediction_type == "epsilon" else noise_scheduler.get_velocity(latents, noise, t)
                loss = F.mse_loss(pred.float(), target.float())
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params, args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            running += loss.detach().item() / args.gradient_accumulation_steps
            if accelerator.sync_gradients:
                global_step += 1
                progress.update(1)
                logs = {"loss": running, "lr": lr_scheduler.get_last_lr()[0]}
                progress.set_postfix(**logs)
                accelerator.log(logs, step=global_step)
                if global_step % args.logging_steps == 0:
                    logger.info("step %d: loss %.5f", global_step, running)
                running = 0.0
                if global_step % args.checkpointing_steps == 0:
                    checkpoint()
                if global_step >= max_steps:
                    break
    progress.close()

    accelerator.wait_for_everyone()
    if accelerator.is_main_process and not args.no_export:
        unet_final = accelerator.unwrap_model(unet)
        controlnet_final = accelerator.unwrap_model(controlnet)
        unet_final.save_pretrained(output_dir / "unet")
        controlnet_final.save_pretrained(output_dir / "controlnet")
        if weight_dtype != torch.float32:  # the exported pipeline holds fp32 weights
            vae.to(dtype=torch.float32)
            text_encoder.to(dtype=torch.float32)
        pipe = EnhancerPipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
            unet=unet_final, controlnet=controlnet_final, scheduler=make_inference_scheduler(noise_scheduler.config),
        )
        pipe.save_pretrained(output_dir / "pipeline")
        logger.info("exported the trained enhancer to %s", output_dir / "pipeline")
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
