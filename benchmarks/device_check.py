"""A short, prepared accelerator check for sessions that are lent a GPU (prints one JSON summary).

    python benchmarks/device_check.py --device cuda      # a few minutes at most
    python benchmarks/device_check.py --device cpu       # smoke run of the script itself

What it checks, all with random weights (no downloads):
  afine_fp32     full-size ViT-B/32 AfineModel on the device vs the same model on the CPU (max |diff| per output)
  afine_bf16     bf16 backbone (heads kept fp32) vs fp32 on the device: outputs finite, score difference
  afine_speed    scoring throughput on the device: one-pair-at-a-time vs batched vs reference reuse (ratios)
  enhancer_half  the tiny enhancer pipeline in fp16 (bf16 on CPU) with tiling and the latent start: finite output
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FIELDS = ("score", "score_raw", "fidelity", "naturalness_distorted", "naturalness_reference")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def check_afine(device: torch.device) -> dict:
    from modeling_afine import AfineConfig, AfineModel

    torch.manual_seed(0)
    model = AfineModel(AfineConfig()).eval()
    dis = torch.randn(4, 3, 224, 320)
    ref = torch.randn(4, 3, 224, 320)
    out: dict = {}
    with torch.inference_mode():
        cpu = model(dis, ref)
        model_dev = model.to(device)
        dev = model_dev(dis.to(device), ref.to(device))
        out["afine_fp32"] = {f: float((getattr(dev, f).cpu() - getattr(cpu, f)).abs().max()) for f in FIELDS}
        with torch.autocast(device.type, dtype=torch.bfloat16):
            half = model_dev(dis.to(device), ref.to(device))
        out["afine_bf16"] = {
            "all_finite": all(bool(torch.isfinite(getattr(half, f)).all()) for f in FIELDS),
            "heads_fp32": all(getattr(half, f).dtype == torch.float32 for f in FIELDS),
            "max_score_diff_vs_fp32": float((half.score - dev.score).abs().max()),
        }
        x = torch.randn(8, 3, 256, 256, device=device)
        r = torch.randn(1, 3, 256, 256, device=device)

        def timed(fn):
            fn()
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            return time.perf_counter() - t

        base = timed(lambda: [model_dev(x[i : i + 1], r) for i in range(8)])
        batched = timed(lambda: model_dev(x, r.expand(8, -1, -1, -1)))
        reuse = timed(lambda: model_dev(x, reference_encoding=model_dev.encode_reference(r)))
        out["afine_speed"] = {
            "baseline_s": round(base, 4),
            "batched_x": round(base / batched, 2),
            "reuse_x": round(base / reuse, 2),
        }
    return out


def check_enhancer(device: torch.device, tmp: Path) -> dict:
    from pipelines import EnhancerPipeline
    from tests.pipelines.conftest import build_tiny_components, random_image

    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    pipe = EnhancerPipeline(**build_tiny_components(tmp, seed=0)).to(device, dtype)
    img = random_image((96, 136), seed=1)
    res = pipe(
        img,
        num_inference_steps=4,
        init_latent_from_noise=False,
        added_noise_level=900,
        latent_tiled_size=8,
        latent_tiled_overlap=4,
        generator=torch.Generator(device="cpu").manual_seed(0),
        output_type="np",
    ).images
    return {"enhancer_half": {"dtype": str(dtype), "shape": list(res[0].shape), "finite": bool(torch.isfinite(torch.as_tensor(res)).all())}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--skip-enhancer", action="store_true")
    args = ap.parse_args()
    device = torch.device(args.device)
    summary: dict = {"device": str(device), "name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    summary.update(check_afine(device))
    if not args.skip_enhancer:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            try:
                summary.update(check_enhancer(device, Path(tmp)))
            except Exception as exc:  # report, do not hide the AFINE results
                summary["enhancer_half"] = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
