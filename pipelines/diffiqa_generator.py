"""Regenerate a DiffIQA-style dataset: 6 enhanced variants per reference with the paper's random
hyper-parameters (spec/enhancer.md §2.3 and §2.6).

Layout written under ``out`` (point ``out`` at ``<dataset>/images`` for the DiffIQA builder)::

    out/Original/{name}.png          the reference (copied; converted to PNG if it was not one)
    out/{01..06}/{name}_{NN}.png     the enhanced variants
    out/manifest.jsonl               one JSON record per finished output, in input order once merged
    out/manifest.jsonl.parts/        while sharded: each worker's records, rank-RRRRR-of-WWWWW.jsonl

Each variant's choices come from ``random.Random`` seeded by ``(seed, name, variant)``, so they do
not depend on the order, the sharding or on resuming, and they are recorded in the manifest:

* input: the reference (p 0.5) or its weak degradation (:class:`~pipelines.degradations.WeakDegradation`);
* x2 bicubic pre-upscale with p ``upscale_prob`` (0.25, as the authors' ``demo.sh``);
* start: pure noise (p 0.5) or the input latent noised twice;
* steps U{20..1000} (= the added noise level in latent mode; 1000 runs as 999, see the pipeline);
* diffusion seed U{0..100}.

Outputs are written durably (temporary file, fsync, atomic rename, fsync of the folder) before their
manifest record is written and fsync-ed, and skipped when they exist, so a killed run (or a power
loss) resumes where it stopped; a manifest line torn by a power loss is repaired before appending.

Sharding follows the project's convention (``modeling_afine.sharding``, as ``afine score`` and the benchmark
evaluation): worker ``r`` of ``W`` takes the references ``i % W == r`` of the sorted list, so workers never write
the same file, and appends its records to its own part file. Every worker reads ``manifest.jsonl`` and all part
files on start (whatever world size wrote them), so a job resumes after a change of world size. At the end, a
single process, or rank 0 after a barrier when a launcher set up a process group (``accelerate launch``,
``torchrun``), merges every record into ``manifest.jsonl`` in input order (reference, then variant) and removes
the parts. Workers started by hand (``--shard-index/--num-shards``, a job array) leave their parts; the next
single-process run over the same folder (it finds nothing left to generate) merges them.
"""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from .degradations import WeakDegradation
from .durable import JsonlLog, copy_file_durable, read_jsonl, save_png_durable

logger = logging.getLogger(__name__)

__all__ = [
    "DiffIQASettings",
    "GenerationReport",
    "IMAGE_EXTENSIONS",
    "sample_variant",
    "list_references",
    "shard_references",
    "variant_path",
    "generate_diffiqa",
    "read_manifest",
    "merge_manifest",
]

MANIFEST = "manifest.jsonl"

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class DiffIQASettings:
    """Fixed and random knobs of the generation (defaults: the DiffIQA values)."""

    num_variants: int = 6
    seed: int = 0
    degrade_prob: float = 0.5
    upscale_prob: float = 0.25
    upscale: float = 2.0
    noise_start_prob: float = 0.5
    steps_range: tuple[int, int] = (20, 1000)
    seed_range: tuple[int, int] = (0, 100)
    prompt: str = "clean, high-resolution, 8k"
    negative_prompt: str = "blurry, dotted, noise, raster lines, unclear, lowres, over-smoothed"
    guidance_scale: float = 7.5
    conditioning_scale: float = 1.0
    latent_tiled_size: int = 64
    latent_tiled_overlap: int = 8
    process_size: int | None = 512

    def __post_init__(self):
        if not 1 <= self.num_variants <= 99:
            raise ValueError("num_variants must be in [1, 99]")
        lo, hi = self.steps_range
        if not 1 <= lo <= hi:
            raise ValueError(f"bad steps_range {self.steps_range}")


@dataclass
class GenerationReport:
    """What one worker did."""

    written: int = 0
    skipped: int = 0
    recovered_records: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (file, message)
    references: int = 0
    interrupted: bool = False


def sample_variant(name: str, variant: int, settings: DiffIQASettings) -> dict[str, Any]:
    """The random choices of variant ``variant`` (1-based) of reference ``name``; deterministic.

    Draw order follows the official script: diffusion seed, input source, pre-upscale, start mode
    and step count.
    """
    rng = random.Random(f"diffiqa:{settings.seed}:{name}:{variant}")
    seed = rng.randint(*settings.seed_range)
    degraded = rng.random() >= 1 - settings.degrade_prob  # official: GT if random() < 0.5
    degradation_seed = rng.getrandbits(63)
    upscaled = rng.random() < settings.upscale_prob
    noise_start = rng.random() < settings.noise_start_prob
    steps = rng.randint(*settings.steps_range)
    return {
        "seed": seed,
        "input": "degraded" if degraded else "gt",
        "degradation_seed": degradation_seed if degraded else None,
        "upscale": settings.upscale if upscaled else 1.0,
        "start": "noise" if noise_start else "latent",
        "num_inference_steps": steps,
        "added_noise_level": None if noise_start else steps,
    }


def list_references(folder: str | os.PathLike) -> list[Path]:
    """Image files directly in ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"reference folder not found: {folder}")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def shard_references(references: Sequence[Path], rank: int, world: int) -> list[Path]:
    """The references of worker ``rank`` out of ``world``: those at positions ``i % world == rank``."""
    from modeling_afine.sharding import World, shard_indices  # torch-free; imported late (package layering)

    if not 0 <= rank < world:
        raise ValueError(f"shard index {rank} not in [0, {world})")
    return [references[i] for i in shard_indices(len(references), World(rank=rank, size=world))]


def variant_path(out: Path, name: str, variant: int) -> Path:
    nn = f"{variant:02d}"
    return Path(out) / nn / f"{name}_{nn}.png"


def _manifest_path(out: Path, rank: int, world: int) -> Path:
    """Where this worker appends its records: ``manifest.jsonl`` alone, else its part file."""
    from modeling_afine.sharding import World, part_path

    manifest = out / MANIFEST
    return manifest if world == 1 else part_path(manifest, World(rank=rank, size=world))


def _legacy_worker_manifests(out: Path) -> list[Path]:
    # Per-worker files written by earlier versions (manifest.{rank}-of-{world}.jsonl): still read and merged.
    return sorted(out.glob("manifest.*-of-*.jsonl"))


def read_manifest(out: str | os.PathLike) -> dict[str, dict]:
    """All manifest records under ``out`` (``manifest.jsonl`` and every worker's part), keyed by output file
    (relative path); the last record of a file wins. Unreadable lines (a line torn by a crash) are skipped."""
    from modeling_afine.sharding import part_files

    out = Path(out)
    records: dict[str, dict] = {}
    for path in [out / MANIFEST, *part_files(out / MANIFEST), *_legacy_worker_manifests(out)]:
        if not path.is_file():
            continue
        for rec in read_jsonl(path):
            if "file" in rec:
                records[rec["file"]] = rec
    return records


def merge_manifest(out: str | os.PathLike, order: Sequence[str] = ()) -> int:
    """Merge every worker's records into ``out/manifest.jsonl`` (one per output file) and remove the parts.

    Records are written in ``order`` (relative output paths, e.g. reference then variant), then any others in
    the order first seen. The file is replaced atomically and durably; part files go only after that.
    Returns the number of records.
    """
    from modeling_afine.sharding import write_records

    out = Path(out)
    records = read_manifest(out)
    position = {name: i for i, name in enumerate(order)}
    merged = sorted(records.values(), key=lambda rec: position.get(rec["file"], len(position)))
    count = write_records(out / MANIFEST, merged)
    for legacy in _legacy_worker_manifests(out):
        legacy.unlink()
    return count


def _copy_reference(src: Path, image: Image.Image, dst: Path) -> None:
    if src.suffix.lower() == ".png":
        copy_file_durable(src, dst)
    else:
        save_png_durable(image, dst)


def _to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)


def _to_pil(x: torch.Tensor) -> Image.Image:
    arr = (x.clamp(0, 1) * 255.0).round().to(torch.uint8)
    return Image.fromarray(arr.squeeze(0).permute(1, 2, 0).cpu().numpy())


def prepare_input(reference: Image.Image, choice: dict, degradation: WeakDegradation) -> Image.Image:
    """The image fed to the enhancer for one variant: the reference or its weak degradation, then the
    optional bicubic pre-upscale."""
    image = reference
    if choice["input"] == "degraded":
        rng = np.random.default_rng(choice["degradation_seed"])
        result = degradation(_to_tensor(reference), rng, augment=False)
        choice["degradation"] = result.params
        image = _to_pil(result.lq)
    if choice["upscale"] != 1.0:
        w, h = image.size
        image = image.resize((round(w * choice["upscale"]), round(h * choice["upscale"])), Image.BICUBIC)
    return image


def generate_diffiqa(
    pipe,
    references: Iterable[str | os.PathLike],
    out: str | os.PathLike,
    settings: DiffIQASettings | None = None,
    *,
    rank: int = 0,
    world: int = 1,
    load_image: Callable[[Path], Image.Image] | None = None,
    progress: bool = True,
    max_outputs: int | None = None,
    barrier: Callable[[], None] | None = None,
) -> GenerationReport:
    """Generate this worker's share of the dataset; see the module docstring.

    Args:
        pipe: an :class:`~pipelines.EnhancerPipeline` (any device/dtype).
        references: reference image files (all workers must pass the same list).
        out: output folder.
        rank, world: this worker's shard (references ``i % world == rank`` of the sorted list).
        load_image: reader returning an RGB PIL image (default: the project's
            ``modeling_afine.image_io.load_image``).
        max_outputs: stop after writing this many variants (for tests / time-boxed jobs).
        barrier: with ``world > 1``, waits for every worker (a process group's barrier); rank 0 then merges the
            manifest. Without it sharded workers leave their part files for a later single-process run.
    """
    from tqdm.auto import tqdm

    settings = settings or DiffIQASettings()
    if load_image is None:
        from modeling_afine.image_io import load_image as _load

        load_image = _load
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    all_refs = sorted(Path(r) for r in references)
    refs = shard_references(all_refs, rank, world)
    names = [r.stem for r in refs]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ValueError(f"several references share the name(s) {sorted(dupes)[:5]}: outputs would collide")
    underscored = [n for n in names if "_" in n]
    if underscored:
        logger.warning(
            "%d reference name(s) contain '_' (e.g. %s); DiffIQA tools split '{ref}_{NN}' at underscores",
            len(underscored), underscored[0],
        )
    report = GenerationReport(references=len(refs))
    done = read_manifest(out)
    manifest = JsonlLog(_manifest_path(out, rank, world))
    degradation = WeakDegradation()
    device = pipe._execution_device
    common = {
        "prompt": settings.prompt, "negative_prompt": settings.negative_prompt,
        "guidance_scale": settings.guidance_scale, "conditioning_scale": settings.conditioning_scale,
    }

    def record(rec: dict) -> None:
        manifest.append(rec)  # durable when it returns

    bar = tqdm(total=len(refs) * settings.num_variants, desc=f"DiffIQA worker {rank}/{world}", disable=not progress, unit="img")
    try:
        for ref in refs:
            if report.interrupted:
                break
            name = ref.stem
            todo = []
            for v in range(1, settings.num_variants + 1):
                path = variant_path(out, name, v)
                rel = path.relative_to(out).as_posix()
                if path.is_file():
                    report.skipped += 1
                    bar.update()
                    if rel not in done:  # image written, record lost (killed in between): redo the record
                        choice = sample_variant(name, v, settings)
                        record({"file": rel, "reference": f"Original/{name}.png", "name": name, "variant": v,
                                "settings": choice, **common, "recovered": True, "worker": rank})
                        report.recovered_records += 1
                else:
                    todo.append(v)
            original = out / "Original" / f"{name}.png"
            if not todo and original.is_file():
                continue
            try:
                image = load_image(ref)
            except Exception as err:  # noqa: BLE001 - the loader's error names the file
                report.failed.append((str(ref), str(err)))
                logger.error("%s", err)
                bar.update(len(todo))
                continue
            if not original.is_file():
                _copy_reference(ref, image, original)
            for v in todo:
                if max_outputs is not None and report.written >= max_outputs:
                    report.interrupted = True
                    break
                path = variant_path(out, name, v)
                choice = sample_variant(name, v, settings)
                start = time.perf_counter()
                try:
                    fed = prepare_input(image, choice, degradation)
                    gen = torch.Generator(device=device).manual_seed(choice["seed"])
                    result = pipe(
                        settings.prompt,
                        fed,
                        negative_prompt=settings.negative_prompt,
                        guidance_scale=settings.guidance_scale,
                        controlnet_conditioning_scale=settings.conditioning_scale,
                        num_inference_steps=choice["num_inference_steps"],
                        init_latent_from_noise=choice["start"] == "noise",
                        added_noise_level=choice["added_noise_level"],
                        generator=gen,
                        latent_tiled_size=settings.latent_tiled_size,
                        latent_tiled_overlap=settings.latent_tiled_overlap,
                        process_size=settings.process_size,
                        output_type="pil",
                    ).images[0]
                    if result.size != image.size:  # undo the pre-upscale (PIL bicubic, as the official script)
                        result = result.resize(image.size, Image.BICUBIC)
                    save_png_durable(result, path)
                except Exception as err:  # noqa: BLE001 - report and go on with the next output
                    report.failed.append((str(path), f"{type(err).__name__}: {err}"))
                    logger.error("failed to generate %s: %s", path, err)
                    bar.update()
                    continue
                rel = path.relative_to(out).as_posix()
                record({"file": rel, "reference": f"Original/{name}.png", "name": name, "variant": v,
                        "settings": choice, **common, "seconds": round(time.perf_counter() - start, 3),
                        "device": str(device), "worker": rank})
                report.written += 1
                bar.update()
    finally:
        bar.close()
        manifest.close()
    if world > 1 and barrier is not None:
        barrier()  # every worker has written its part
    if rank == 0 and (world == 1 or barrier is not None):
        order = [variant_path(Path(), r.stem, v).as_posix() for r in all_refs for v in range(1, settings.num_variants + 1)]
        merge_manifest(out, order)
    return report


def settings_to_dict(settings: DiffIQASettings) -> dict:
    return asdict(settings)
