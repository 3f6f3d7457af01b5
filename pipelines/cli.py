"""``afine enhancer ...``: enhance images, regenerate DiffIQA, select and crop references.

Exit codes: 0 success, 1 some inputs failed (each reported with its file), 2 usage errors and models
that cannot be loaded (a missing folder, a Hub id neither cached nor reachable), in one line.
Long jobs write results one by one and skip finished outputs when run again.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["main", "build_parser"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class UsageError(Exception):
    """Bad command-line usage detected after parsing (exit code 2)."""


def _err(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)


def _collect_images(inputs: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        elif p.is_file():
            files.append(p)
        else:
            raise UsageError(f"input not found: {p}")
    if not files:
        raise UsageError("no input images found")
    return files


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="EnhancerPipeline directory (save_pretrained), an SD-1.5 diffusers directory holding the "
                        "released unet/ and controlnet/ folders, or (with --enhancer) SD-1.5 directory / Hub id")
    p.add_argument("--enhancer", default=None,
                   help="folder (or Hub id) with the released enhancer's unet/ and controlnet/ subfolders")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda if available)")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                   help="weights precision (auto: fp16 on GPU as the official code, fp32 on CPU)")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="afine enhancer",
        description="A-FINE diffusion enhancer: enhance images, regenerate DiffIQA, select and crop references.",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("enhance", help="enhance images with the diffusion enhancer")
    p.add_argument("inputs", nargs="+", help="image files and/or folders")
    p.add_argument("-o", "--output", required=True, help="output folder ({stem}.png per input)")
    _add_model_args(p)
    p.add_argument("--steps", type=_positive_int, default=20, help="UniPC steps (default 20; >999 runs 999)")
    p.add_argument("--guidance-scale", type=float, default=7.5)
    p.add_argument("--conditioning-scale", type=float, default=1.0)
    p.add_argument("--start", choices=["noise", "latent"], default="noise",
                   help="start from noise or from the input latent noised twice")
    p.add_argument("--noise-level", type=int, default=None, help="added noise level for --start latent (default: --steps)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompt", default=None, help='default "clean, high-resolution, 8k"')
    p.add_argument("--negative-prompt", default=None, help="default: the DiffIQA negative prompt")
    p.add_argument("--process-size", type=int, default=512, help="upscale short sides below this first (0: never)")
    p.add_argument("--tile-size", type=_positive_int, default=64, help="latent tile size (latent px)")
    p.add_argument("--tile-overlap", type=int, default=8)
    p.add_argument("--no-color-fix", action="store_true")
    p.add_argument("--overwrite", action="store_true", help="redo outputs that exist")

    p = sub.add_parser("generate-diffiqa", help="write 6 enhanced variants per reference (DiffIQA layout)")
    p.add_argument("--references", required=True, help="folder of reference images (512x512 crops)")
    p.add_argument("-o", "--output", required=True, help="output folder (e.g. <dataset>/images)")
    _add_model_args(p)
    p.add_argument("--seed", type=int, default=0, help="base seed of all random choices")
    p.add_argument("--num-variants", type=_positive_int, default=6)
    p.add_argument("--upscale-prob", type=_probability, default=0.25)
    p.add_argument("--min-steps", type=_positive_int, default=20, help="smallest random step count (default 20)")
    p.add_argument("--max-steps", type=_positive_int, default=1000, help="largest random step count (default 1000)")
    p.add_argument("--process-size", type=int, default=512)
    p.add_argument("--shard-index", type=int, default=None,
                   help="this worker when started by hand (default: the launcher's RANK); hand-started workers "
                        "leave their records in OUTPUT/manifest.jsonl.parts/ until a single-process run merges them")
    p.add_argument("--num-shards", type=int, default=None, help="number of workers (default: the launcher's WORLD_SIZE)")
    p.add_argument("--max-outputs", type=int, default=None, help="stop after this many new outputs")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("select-references", help="keep textured images (gray std >= 60, Laplacian var >= 60)")
    p.add_argument("inputs", nargs="+", help="image files and/or folders")
    p.add_argument("-o", "--output", required=True, help="folder receiving copies of the kept images")
    p.add_argument("--min-std", type=float, default=60.0)
    p.add_argument("--min-laplacian-var", type=float, default=60.0)

    p = sub.add_parser("crop", help="cut 512x512 reference crops on a jittered grid")
    p.add_argument("inputs", nargs="+", help="image files and/or folders")
    p.add_argument("-o", "--output", required=True, help="folder for {stem}x{row}y{col}.png crops")
    p.add_argument("--size", type=_positive_int, default=512)
    p.add_argument("--stride", type=_positive_int, default=384)
    p.add_argument("--min-std", type=float, default=50.0)
    p.add_argument("--min-laplacian-var", type=float, default=50.0)
    p.add_argument("--seed", type=int, default=0, help="seed of the grid jitter (per image: seed + name)")
    return parser


# ----------------------------------------------------------------------------- helpers
def _resolve_device_dtype(device: str, dtype: str, default_device=None):
    import torch

    if device == "auto":
        device = str(default_device) if default_device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda requested but no GPU is available")
    if dtype == "auto":
        dtype = "fp16" if dev.type == "cuda" else "fp32"
    return dev, {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]


def _check_sources(args) -> None:
    """Fail in a second, before the heavy imports, when --model/--enhancer cannot be loaded: a folder
    that does not exist, or a Hub id that is not cached while the Hub is offline / unreachable."""
    from .model_source import ModelSourceError, check_model_source

    try:
        if args.enhancer:
            check_model_source(args.model, "vae/config.json", what="SD-1.5 model (--model)")
            check_model_source(args.enhancer, "unet/config.json", what="enhancer (--enhancer)")
        else:
            check_model_source(args.model, "model_index.json", what="model")
    except ModelSourceError as err:
        raise UsageError(str(err)) from err


def _load_pipeline(args, default_device=None):
    """The pipeline of --model/--enhancer on the chosen device. A model that cannot be loaded (folder
    missing, Hub id neither cached nor reachable, broken folder) is a one-line UsageError (exit 2)."""
    from .model_source import ModelSourceError
    from .pipeline_enhancer import EnhancerPipeline

    device, dtype = _resolve_device_dtype(args.device, args.dtype, default_device)
    try:
        if args.enhancer:
            pipe = EnhancerPipeline.from_sd15(args.model, args.enhancer, dtype=dtype)
        else:
            pipe = EnhancerPipeline.from_pretrained(args.model, dtype=dtype)
    except ModelSourceError as err:
        raise UsageError(str(err)) from err
    except (OSError, ValueError, TypeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UsageError(f"could not load the enhancer from --model {args.model}: {first}") from err
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ----------------------------------------------------------------------------- commands
def _cmd_enhance(args) -> int:
    files = _collect_images(args.inputs)
    out = Path(args.output)
    stems = [f.stem for f in files]
    dup = sorted({s for s in stems if stems.count(s) > 1})
    if dup:
        raise UsageError(f"several inputs share the name {dup[0]!r}; their outputs would collide")
    todo = [f for f in files if args.overwrite or not (out / f"{f.stem}.png").is_file()]
    if len(todo) < len(files):
        print(f"skipping {len(files) - len(todo)} image(s) already enhanced in {out} (use --overwrite to redo)")
    if not todo:
        return 0
    _check_sources(args)
    import torch
    from tqdm.auto import tqdm

    from modeling_afine.image_io import ImageLoadError, load_image

    from .durable import save_png_durable
    from .pipeline_enhancer import DEFAULT_NEGATIVE_PROMPT, DEFAULT_PROMPT

    pipe = _load_pipeline(args)
    failures = 0
    for f in tqdm(todo, desc="enhancing", unit="img"):
        try:
            image = load_image(f)
            result = pipe(
                DEFAULT_PROMPT if args.prompt is None else args.prompt,
                image,
                negative_prompt=DEFAULT_NEGATIVE_PROMPT if args.negative_prompt is None else args.negative_prompt,
                num_inference_steps=args.steps,
                guidance_scale=args.guidance_scale,
                controlnet_conditioning_scale=args.conditioning_scale,
                init_latent_from_noise=args.start == "noise",
                added_noise_level=args.noise_level,
                generator=torch.Generator(device=pipe._execution_device).manual_seed(args.seed),
                latent_tiled_size=args.tile_size,
                latent_tiled_overlap=args.tile_overlap,
                process_size=args.process_size or None,
                color_fix=not args.no_color_fix,
            ).images[0]
            save_png_durable(result, out / f"{f.stem}.png")
        except (ImageLoadError, ValueError, TypeError, RuntimeError) as err:  # RuntimeError: e.g. out of memory
            failures += 1
            _err(f"{f}: {err}")
    return 1 if failures else 0


def _shard(args) -> tuple[int, int, object]:
    """This worker's (rank, world, device). Without --shard-index/--num-shards they come from the launcher's
    environment, read by the project's sharding convention (``modeling_afine.sharding.current_world``: RANK,
    WORLD_SIZE, LOCAL_RANK, set by ``accelerate launch`` and ``torchrun``); the workers need no process group,
    each one just takes its share."""
    from modeling_afine.sharding import current_world  # torch-free; imported late (package layering)

    try:
        launcher = current_world()
    except ValueError as err:
        raise UsageError(str(err)) from err
    rank = launcher.rank if args.shard_index is None else args.shard_index
    world = launcher.size if args.num_shards is None else args.num_shards
    if world < 1 or not 0 <= rank < world:
        raise UsageError(f"--shard-index must be in [0, --num-shards), got {rank} of {world}")
    device = None
    if launcher.distributed and args.device == "auto":
        import torch

        if torch.cuda.is_available():
            device = f"cuda:{launcher.local_rank % torch.cuda.device_count()}"
    return rank, world, device


def _cmd_generate(args) -> int:
    if not Path(args.references).is_dir():
        raise UsageError(f"reference folder not found: {args.references}")
    _check_sources(args)
    from .diffiqa_generator import DiffIQASettings, generate_diffiqa, list_references

    try:
        refs = list_references(args.references)
    except FileNotFoundError as err:
        raise UsageError(str(err)) from err
    if not refs:
        raise UsageError(f"no reference images in {args.references}")
    if args.min_steps > args.max_steps:
        raise UsageError("--min-steps must not exceed --max-steps")
    rank, world, device = _shard(args)
    settings = DiffIQASettings(
        num_variants=args.num_variants, seed=args.seed, upscale_prob=args.upscale_prob,
        process_size=args.process_size or None, steps_range=(args.min_steps, args.max_steps),
    )
    pipe = _load_pipeline(args, default_device=device)
    group = None
    if world > 1 and args.shard_index is None and args.num_shards is None:
        from modeling_afine.sharding import ProcessGroup, current_world, launched_with_rendezvous

        if launched_with_rendezvous():  # accelerate launch / torchrun: wait for all, then rank 0 merges
            group = ProcessGroup(current_world(), cpu=str(pipe._execution_device).startswith("cpu"))
    try:
        report = generate_diffiqa(pipe, refs, args.output, settings, rank=rank, world=world,
                                  progress=not args.no_progress, max_outputs=args.max_outputs,
                                  barrier=group.barrier if group is not None else None)
    finally:
        if group is not None:
            group.close()
    print(f"worker {rank}/{world}: {report.written} written, {report.skipped} already present, "
          f"{len(report.failed)} failed, {report.references} references")
    for file, msg in report.failed:
        _err(f"{file}: {msg}")
    return 1 if report.failed else 0


def _cmd_select(args) -> int:
    from tqdm.auto import tqdm

    from .durable import JsonlLog, copy_file_durable
    from .references import select_references

    files = _collect_images(args.inputs)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    kept = failed = 0
    with JsonlLog(out / "selection.jsonl") as log:
        for f, ok, stats, error in tqdm(select_references(files, args.min_std, args.min_laplacian_var),
                                        total=len(files), desc="selecting", unit="img"):
            if error is not None:
                failed += 1
                _err(error)
                continue
            if ok:
                kept += 1
                dst = out / f.name
                if not dst.is_file():
                    copy_file_durable(f, dst)
            log.append({"file": str(f), "kept": ok, "std": stats[0], "laplacian_var": stats[1]})
    print(f"kept {kept} of {len(files)} image(s) in {out}")
    return 1 if failed else 0


def _cmd_crop(args) -> int:
    from tqdm.auto import tqdm

    from modeling_afine.image_io import load_image

    from .durable import JsonlLog, read_jsonl, save_png_durable
    from .references import crop_image

    files = _collect_images(args.inputs)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "crops.jsonl"
    done = {rec["file"] for rec in read_jsonl(log_path) if "file" in rec} if log_path.is_file() else set()
    failed = total = 0
    with JsonlLog(log_path) as log:
        for f in tqdm(files, desc="cropping", unit="img"):
            if str(f) in done:
                continue
            try:
                image = load_image(f)
            except Exception as err:  # noqa: BLE001 - the loader names the file
                failed += 1
                _err(str(err))
                continue
            crops = crop_image(image, f.stem, random.Random(f"crop:{args.seed}:{f.stem}"), args.size, args.stride,
                               args.min_std, args.min_laplacian_var)
            for name, crop, _ in crops:
                save_png_durable(crop, out / f"{name}.png")
            total += len(crops)
            log.append({"file": str(f), "crops": [c[0] for c in crops]})
    print(f"wrote {total} crop(s) to {out}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: 0 for --help, 2 for usage errors
        return int(exc.code or 0)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    commands = {"enhance": _cmd_enhance, "generate-diffiqa": _cmd_generate, "select-references": _cmd_select,
                "crop": _cmd_crop}
    try:
        return commands[args.command](args)
    except UsageError as err:
        _err(str(err))
        return 2
    except (OSError, ValueError) as err:
        _err(str(err))
        return 1
    except KeyboardInterrupt:
        _err("interrupted; run the same command again to resume")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
