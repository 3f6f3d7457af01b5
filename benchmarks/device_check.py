"""A short, prepared accelerator check for sessions that are lent a GPU (prints a table and one JSON summary).

    python benchmarks/device_check.py --device cuda --out device_check.json   # about 2-4 minutes on one H200
    python benchmarks/device_check.py --device cpu --tiny                     # smoke run of the script itself

What it checks, all with random weights (no downloads):
  afine_fp32     AfineModel on the device vs the same model on the CPU (max |diff| per output)
  afine_bf16     bf16 backbone (heads kept fp32) vs fp32 on the device: outputs finite, score difference
  table          scoring speed for fp32 / bf16 / fp16 backbones, batch sizes 1-64, at 512^2 and 1024^2:
                 distorted images per second against an encoded reference, speed-up over the official-style
                 baseline (fp32, batch 1, both images through CLIP per pair), and the fraction of the GEMM floor
                 (the best of ``torch.matmul`` and ``F.linear`` on the backbone's projection shapes, same dtype,
                 timed in the same run; see ``bench_scoring.gemm_rate``)
  big_pair       one 3840x2160 pair (fp32 and bf16) in a fresh subprocess: seconds and peak GPU memory
  enhancer_half  the tiny enhancer pipeline in fp16 (bf16 on CPU) with tiling and the latent start: finite output
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_big_image import build_model  # noqa: E402
from bench_scoring import backbone_gemms, gemm_floor, official_style, run_subprocess_json, timed, tokens_for  # noqa: E402

FIELDS = ("score", "score_raw", "fidelity", "naturalness_distorted", "naturalness_reference")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _timed(fn, device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn`` after one warm-up call, with device synchronisation around each call."""
    return timed(fn, repeats, device)[0]


def check_afine(device: torch.device, tiny: bool) -> dict:
    model = build_model(None, "fp32", tiny)
    dis = torch.randn(4, 3, 224, 320)
    ref = torch.randn(4, 3, 224, 320)
    out: dict = {}
    with torch.inference_mode():
        cpu = model(dis, ref)
        model_dev = model.to(device)
        dev = model_dev(dis.to(device), ref.to(device))
        out["afine_fp32"] = {f: float((getattr(dev, f).cpu() - getattr(cpu, f)).abs().max()) for f in FIELDS}
        half_model = copy.deepcopy(model_dev)
        half_model.vision_model.to(torch.bfloat16)
        half = half_model(dis.to(device), ref.to(device))
        out["afine_bf16"] = {
            "all_finite": all(bool(torch.isfinite(getattr(half, f)).all()) for f in FIELDS),
            "heads_fp32": all(getattr(half, f).dtype == torch.float32 for f in FIELDS),
            "max_score_diff_vs_fp32": float((half.score.cpu() - dev.score.cpu()).abs().max()),
        }
    return out


def speed_table(device: torch.device, sizes, batches, dtypes, repeats: int, tiny: bool, baseline_pairs: int) -> list[dict]:
    """One row per (size, dtype, batch): images/s with reference reuse, speed-up over baseline, fraction of floor."""
    base_model = build_model(None, "fp32", tiny).to(device)
    vc = base_model.config.vision_config
    rows = []
    for size in sizes:
        g = torch.Generator().manual_seed(0)
        ref = torch.randn(1, 3, size, size, generator=g).to(device)
        dis = torch.randn(max(batches), 3, size, size, generator=g).to(device)
        with torch.inference_mode():
            per_image_base = _timed(lambda: official_style(base_model, dis[:baseline_pairs], ref), device, repeats) / baseline_pairs
        tokens = tokens_for((size, size), vc.patch_size)
        rows.append({"size": size, "dtype": "fp32", "batch": 1, "mode": "baseline", "images_per_s": 1 / per_image_base, "speedup": 1.0})
        for name in dtypes:
            model = copy.deepcopy(base_model)
            model.vision_model.to(DTYPES[name])
            with torch.inference_mode():
                enc = model.encode_reference(ref)
                for batch in batches:
                    x = dis[:batch]
                    seconds = _timed(lambda: model(x, reference_encoding=enc), device, repeats)
                    floor = gemm_floor(backbone_gemms(vc, tokens, batch), DTYPES[name], device, repeats)
                    rows.append({
                        "size": size, "dtype": name, "batch": batch, "mode": "reuse",
                        "images_per_s": batch / seconds, "speedup": per_image_base * batch / seconds,
                        "of_floor": floor / seconds, "floor_images_per_s": batch / floor,
                    })
            del model, enc
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def check_big_pair(device: torch.device, tiny: bool) -> dict:
    out = {}
    for dtype in ("fp32", "bf16"):
        cmd = [sys.executable, str(HERE / "bench_big_image.py"), "--device", str(device), "--dtype", dtype, "--json"]
        if tiny:
            cmd += ["--tiny", "--size", "64", "96"]
        out[dtype] = run_subprocess_json(cmd, timeout=900)
    return out


def check_enhancer(device: torch.device, tmp: Path) -> dict:
    from pipelines import EnhancerPipeline
    from tests.pipelines.conftest import build_tiny_components, random_image

    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    pipe = EnhancerPipeline(**build_tiny_components(tmp, seed=0)).to(device, dtype)
    img = random_image((96, 136), seed=1)
    res = pipe(
        image=img,
        num_inference_steps=4,
        init_latent_from_noise=False,
        added_noise_level=900,
        latent_tiled_size=8,
        latent_tiled_overlap=4,
        generator=torch.Generator(device="cpu").manual_seed(0),
        output_type="np",
    ).images
    return {"enhancer_half": {"dtype": str(dtype), "shape": list(res[0].shape), "finite": bool(torch.isfinite(torch.as_tensor(res)).all())}}


def print_table(rows: list[dict]) -> None:
    print(f"{'size':>6} {'dtype':>5} {'batch':>5} {'img/s':>9} {'speed-up':>9} {'of floor':>9} {'floor img/s':>12}")
    for r in rows:
        floor = f"{r['of_floor']:.2f}" if "of_floor" in r else ""
        floor_ips = f"{r['floor_images_per_s']:.1f}" if "floor_images_per_s" in r else ""
        label = "base" if r["mode"] == "baseline" else r["dtype"]
        print(f"{r['size']:>6} {label:>5} {r['batch']:>5} {r['images_per_s']:>9.1f} {r['speedup']:>8.2f}x {floor:>9} {floor_ips:>12}")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="tiny backbone, small sizes and batches (smoke test)")
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="square sizes (default 512 1024; tiny: 64)")
    ap.add_argument("--batches", type=int, nargs="+", default=None, help="batch sizes (default 1 2 4 8 16 32 64)")
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16", "fp16"], choices=tuple(DTYPES))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-table", action="store_true")
    ap.add_argument("--skip-big", action="store_true")
    ap.add_argument("--skip-enhancer", action="store_true")
    ap.add_argument("--out", default=None, help="also write the JSON summary here")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    sizes = args.sizes or ([64] if args.tiny else [512, 1024])
    batches = args.batches or ([1, 2] if args.tiny else [1, 2, 4, 8, 16, 32, 64])
    summary: dict = {
        "device": str(device),
        "name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32) if device.type == "cuda" else None,
    }
    started = time.perf_counter()
    summary.update(check_afine(device, args.tiny))
    if not args.skip_table:
        rows = speed_table(device, sizes, batches, args.dtypes, args.repeats, args.tiny, baseline_pairs=2 if args.tiny else 4)
        summary["table"] = rows
        print_table(rows)
    if not args.skip_big:
        summary["big_pair"] = check_big_pair(device, args.tiny)
    if not args.skip_enhancer:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            try:
                summary.update(check_enhancer(device, Path(tmp)))
            except Exception as exc:  # report, do not hide the AFINE results
                summary["enhancer_half"] = {"error": f"{type(exc).__name__}: {exc}"}
    summary["seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(summary, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return summary


if __name__ == "__main__":
    main()
