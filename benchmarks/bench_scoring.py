"""A-FINE speed and memory in one run, as ratios against measurements taken in the same run.

    python benchmarks/bench_scoring.py --out bench_scoring.json        # the full run (minutes on 2 cores)
    python benchmarks/bench_scoring.py --tiny --out /tmp/b.json        # smoke test of the script (seconds)

Rows (full-size ViT-B/32, random weights unless ``--model DIR``; one reference, ``--n`` distorted at ``--size``):
  baseline        official-style: one pair per call, both images through CLIP every time, batch 1, fp32,
                  all 12 block outputs kept and then reduced by the heads (how QuickInference/afine.py scores)
  ours fp32       the shared reference encoded once (``encode_reference``), distorted images batched, fp32
  ours bf16       the same with the backbone in bf16 (heads fp32, as ``load_afine(dtype="bfloat16")``)
  bf16 stock      the same bf16 run through transformers' stock CLIP attention (SDPA), MLP and patch convolution
                  (``AFINE_STOCK_CLIP_MODULES=1``): what the bf16 CPU fast paths gain
  GEMM floor      the backbone's FLOPs (projections, MLP, attention products, patch embedding) at the best rate
                  a GEMM reaches on the model's own projection shapes (tokens x 768 by 768 x 768, 768 x 3072, ...;
                  ``torch.matmul`` and ``F.linear`` layouts, the faster counts), fp32 and bf16, timed on this
                  machine in this run: a lower bound for the model (softmax, layer norms and activations are free)
  floor+softmax   the GEMM floor plus torch's softmax over every attention score (in place, the model's block
                  shape, same run): the bound for an attention that evaluates one softmax per score with torch's
                  kernels; at 4K the scores (8161^2 x 12 per layer) make the softmax a large share of it
  4K pair         one 3840x2160 pair in a fresh subprocess (``bench_big_image.py``): time, peak RSS, vs its floor;
                  ``--big-before`` adds the pre-streaming fp32 path and bf16 with the stock modules
  afine --help    the CLI's start-up, in a subprocess

"speed-up" is baseline time / row time; "of floor" is floor time / row time (1.00 = at the GEMM floor);
"of floor+softmax" likewise with the softmax added to the floor.
The 512x512 rows and both floors are timed in ``--repeats`` interleaved rounds and reported as medians (within a
round each GEMM shape is the best of 5 runs). Run on a quiet machine: time is meaningless when other jobs share
the cores (peak RSS is not).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from bench_big_image import build_model  # noqa: E402


# ------------------------------------------------------------------------------------------------ machine


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """CPU model, cores, torch threads, instruction sets relevant to fp32/bf16 GEMMs, library versions."""
    flags = _cpu_flags()
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    isa = {name: name in flags for name in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")}
    info = {
        "cpu": _cpu_model(),
        "cores_available": cores,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "isa": isa,
        "mkldnn_bf16": bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)()),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# ------------------------------------------------------------------------------------------------ floor


def backbone_gemms(vision_config, tokens: int, images: int, query_block: int = 1024) -> list[tuple]:
    """The backbone's matrix products for ``images`` images of ``tokens`` tokens (CLS included).

    Returns ``(count, a_shape, b_shape, kind)`` tuples for ``torch.matmul``; kind is ``patch`` (the patch
    embedding as a GEMM), ``proj`` (q/k/v/out projections, fc1, fc2) or ``attn`` (Q K^T and P V, listed per
    query block of at most ``query_block`` rows: same FLOPs, bounded memory).
    """
    d, ff, layers = vision_config.hidden_size, vision_config.intermediate_size, vision_config.num_hidden_layers
    heads = vision_config.num_attention_heads
    hd = d // heads
    m = tokens * images
    bh = images * heads
    patch_in = vision_config.num_channels * vision_config.patch_size**2
    q = min(tokens, query_block)
    blocks, rest = divmod(tokens, q)
    out = [(1, ((tokens - 1) * images, patch_in), (patch_in, d), "patch")]
    per_layer = [
        (3, (m, d), (d, d), "proj"),  # q, k, v
        (1, (m, d), (d, d), "proj"),  # output projection
        (1, (m, d), (d, ff), "proj"),  # fc1
        (1, (m, ff), (ff, d), "proj"),  # fc2
        (blocks, (bh, q, hd), (bh, hd, tokens), "attn"),  # Q K^T
        (blocks, (bh, q, tokens), (bh, tokens, hd), "attn"),  # softmax(.) V
    ]
    if rest:
        per_layer += [(1, (bh, rest, hd), (bh, hd, tokens), "attn"), (1, (bh, rest, tokens), (bh, tokens, hd), "attn")]
    out += [(count * layers, a, b, kind) for count, a, b, kind in per_layer]
    return out


def _flops(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    batch = a[0] if len(a) == 3 else 1
    return 2.0 * batch * a[-2] * a[-1] * b[-1]


def gemm_flops(gemms) -> float:
    return sum(g[0] * _flops(g[1], g[2]) for g in gemms)


def _best_seconds(fn, repeats: int, device: torch.device) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def gemm_rate(gemms, dtype: torch.dtype, device: torch.device, repeats: int = 3) -> float:
    """FLOP/s of the best GEMM in ``dtype`` on the workload's projection shapes.

    Each shape is timed both as ``torch.matmul(a, b)`` with ``b`` stored ``[in, out]`` and as ``F.linear`` with
    the weight stored ``[out, in]`` (the model's layout), best of at least 5 runs each, and the faster counts:
    a floor should not be slower than what the model itself reaches.
    """
    flops = seconds = 0.0
    timed_shapes: dict[tuple, float] = {}
    for count, a_shape, b_shape, kind in gemms:
        if kind != "proj":
            continue
        key = (a_shape, b_shape)
        if key not in timed_shapes:
            a = torch.randn(a_shape, device=device).to(dtype)
            b = torch.randn(b_shape, device=device).to(dtype)
            weight = b.t().contiguous()
            runs = max(5, repeats)
            timed_shapes[key] = min(
                _best_seconds(lambda: torch.matmul(a, b), runs, device),
                _best_seconds(lambda: torch.nn.functional.linear(a, weight), runs, device),
            )
            del a, b, weight
        flops += count * _flops(a_shape, b_shape)
        seconds += count * timed_shapes[key]
    return flops / seconds


def gemm_floor(gemms, dtype: torch.dtype, device: torch.device, repeats: int = 3) -> float:
    """Seconds for all the workload's FLOPs (attention and patch embedding included) at the GEMM rate that
    ``torch.matmul`` reaches on the model's own projection shapes in ``dtype``: a lower bound for the model."""
    return gemm_flops(gemms) / gemm_rate(gemms, dtype, device, repeats)


def softmax_seconds(vision_config, tokens: int, images: int, dtype: torch.dtype, device: torch.device, repeats: int = 3) -> float:
    """Seconds torch's softmax takes over all attention scores of ``images`` images (heads x tokens^2 per layer).

    Timed in place on one block of query rows of the size the bf16 CPU attention uses, best of ``repeats``, and
    scaled to all rows and layers. The GEMM floor counts the softmax as free; GEMM floor + this is a lower bound
    for any attention that evaluates one softmax per score with torch's kernels (it matters at 4K, where the
    scores outnumber the projections' outputs a hundredfold).
    """
    from modeling_afine.modeling_afine import _ATTENTION_BLOCK_ELEMENTS

    heads, layers = vision_config.num_attention_heads, vision_config.num_hidden_layers
    rows = max(1, min(tokens, _ATTENTION_BLOCK_ELEMENTS // (images * heads * tokens)))
    block = torch.randn(images, heads, rows, tokens, device=device).to(dtype)
    seconds = _best_seconds(lambda: torch.softmax(block, dim=-1, out=block), max(3, repeats), device)
    return seconds * tokens / rows * layers


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tokens_for(size: tuple[int, int], patch: int) -> int:
    h, w = size
    return (-(-h // patch)) * (-(-w // patch)) + 1


# ------------------------------------------------------------------------------------------------ model runs


def official_style(model, distorted: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """One pair per call, both images through CLIP separately, all block outputs kept, then the heads."""
    from modeling_afine.modeling_afine import stretch_to_multiple, target_size

    scores = []
    for i in range(distorted.shape[0]):
        size = target_size(*distorted.shape[-2:])
        dp = stretch_to_multiple(distorted[i : i + 1], size=size)
        rp = stretch_to_multiple(reference, size=size)
        fd, fr = list(model.extract_features(dp)), list(model.extract_features(rp))
        u_dis, u_ref = model.natural_head(dp, fd), model.natural_head(rp, fr)
        dist = model.fidelity_head(dp, rp, fd, fr)
        n_dis, n_ref = model.natural_calibration(u_dis), model.natural_calibration(u_ref)
        scores.append(model.scale_score(model.adapter(n_dis, n_ref, model.fidelity_calibration(dist))))
    return torch.cat(scores)


def stock_modules(fn):
    """``fn`` run with transformers' stock CLIP attention, MLP and patch convolution (the bf16 CPU fast paths off)."""
    from modeling_afine.modeling_afine import STOCK_MODULES_ENV

    def run():
        before = os.environ.get(STOCK_MODULES_ENV)
        os.environ[STOCK_MODULES_ENV] = "1"
        try:
            return fn()
        finally:
            if before is None:
                del os.environ[STOCK_MODULES_ENV]
            else:
                os.environ[STOCK_MODULES_ENV] = before

    return run


def with_reuse(model, distorted: torch.Tensor, reference: torch.Tensor, batch: int) -> torch.Tensor:
    enc = model.encode_reference(reference)
    return torch.cat([model(distorted[i : i + batch], reference_encoding=enc).score for i in range(0, len(distorted), batch)])


def timed(fn, repeats: int, device: torch.device) -> tuple[float, object]:
    result = fn()  # warm-up, and the values for the agreement check
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def run_subprocess_json(cmd: list[str], timeout: float) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if res.returncode != 0:
        return {"error": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit {res.returncode}"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def help_time(repeats: int) -> dict:
    """Wall time of ``afine --help`` (the console script if installed, else ``python -m modeling_afine``)."""
    beside = Path(sys.executable).with_name("afine")  # the venv's console script, even when not on PATH
    exe = str(beside) if beside.is_file() else shutil.which("afine")
    cmd = [exe, "--help"] if exe else [sys.executable, "-m", "modeling_afine", "--help"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        times.append(time.perf_counter() - t)
        if res.returncode != 0:
            return {"command": " ".join(cmd), "error": res.stderr.strip()[-300:]}
    return {"command": " ".join(Path(c).name if i == 0 else c for i, c in enumerate(cmd)), "seconds": round(statistics.median(times), 3)}


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10, help="distorted images scored against one reference")
    ap.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"))
    ap.add_argument("--batch", type=int, default=10, help="batch size of our rows")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds (medians are reported)")
    ap.add_argument("--big-size", type=int, nargs=2, default=(2160, 3840), metavar=("H", "W"), help="the big pair")
    ap.add_argument("--skip-big", action="store_true", help="skip the 4K pair subprocesses")
    ap.add_argument("--big-before", action="store_true", help="also run the 4K pair through the pre-streaming path")
    ap.add_argument("--skip-help", action="store_true", help="skip timing `afine --help`")
    ap.add_argument("--model", default=None, help="converted A-FINE folder (default: random full-size weights)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--tiny", action="store_true", help="tiny backbone and sizes: a smoke test of this script")
    ap.add_argument("--out", default="bench_scoring.json", help="JSON results file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    info = machine_info()
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items() if k != "isa"))
    print("isa: " + " ".join(f"{k}={'yes' if v else 'no'}" for k, v in info["isa"].items()))

    model = build_model(args.model, "fp32", args.tiny)
    model_bf16 = copy.deepcopy(model)
    model_bf16.vision_model.to(torch.bfloat16)
    vc = model.config.vision_config
    g = torch.Generator().manual_seed(0)
    h, w = args.size
    dis = torch.randn(args.n, 3, h, w, generator=g)
    ref = torch.randn(1, 3, h, w, generator=g)
    tokens = tokens_for(args.size, vc.patch_size)

    # Floor of the reuse workload: the distorted batches plus one reference pass.
    gemms = []
    for i in range(0, args.n, args.batch):
        gemms += backbone_gemms(vc, tokens, min(args.batch, args.n - i))
    gemms += backbone_gemms(vc, tokens, 1)
    flops = gemm_flops(gemms)
    batches = [min(args.batch, args.n - i) for i in range(0, args.n, args.batch)] + [1]
    runs = {
        "baseline": lambda: official_style(model, dis, ref),
        "fp32": lambda: with_reuse(model, dis, ref, args.batch),
        "bf16": lambda: with_reuse(model_bf16, dis, ref, args.batch),
        "bf16 stock": stock_modules(lambda: with_reuse(model_bf16, dis, ref, args.batch)),
        "floor fp32": lambda: gemm_floor(gemms, torch.float32, device, 1),
        "floor bf16": lambda: gemm_floor(gemms, torch.bfloat16, device, 1),
        "softmax fp32": lambda: sum(softmax_seconds(vc, tokens, b, torch.float32, device) for b in batches),
        "softmax bf16": lambda: sum(softmax_seconds(vc, tokens, b, torch.bfloat16, device) for b in batches),
    }
    # Interleaved rounds (each row once per round, medians over rounds): a machine that speeds up or slows
    # down during the run moves every row, so the ratios stay meaningful.
    rows: dict[str, dict] = {}
    samples: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode():
        s_base, s32, s16 = runs["baseline"](), runs["fp32"](), runs["bf16"]()  # warm-up and the values
        s16_stock = runs["bf16 stock"]()
        for _ in range(args.repeats):
            for name, fn in runs.items():
                if name.startswith(("floor", "softmax")):
                    samples[name].append(fn())
                else:
                    _sync(device)
                    start = time.perf_counter()
                    fn()
                    _sync(device)
                    samples[name].append(time.perf_counter() - start)
    t_base, t32, t16, t16_stock, floor32, floor16, soft32, soft16 = (statistics.median(samples[name]) for name in runs)
    rows["baseline fp32"] = {"seconds": t_base, "speedup": 1.0}
    rows["ours fp32 (reuse)"] = {
        "seconds": t32, "speedup": t_base / t32, "of_floor": floor32 / t32, "of_floor_with_softmax": (floor32 + soft32) / t32,
        "max_abs_dscore_vs_baseline": float((s32 - s_base).abs().max()),
    }
    rows["ours bf16 (reuse)"] = {
        "seconds": t16, "speedup": t_base / t16, "of_floor": floor16 / t16, "of_floor_with_softmax": (floor16 + soft16) / t16,
        "max_abs_dscore_vs_fp32": float((s16 - s32).abs().max()),
    }
    rows["bf16, stock CLIP modules"] = {
        "seconds": t16_stock, "speedup": t_base / t16_stock, "of_floor": floor16 / t16_stock,
        "of_floor_with_softmax": (floor16 + soft16) / t16_stock, "max_abs_dscore_vs_fp32": float((s16_stock - s32).abs().max()),
    }
    rows["GEMM floor fp32"] = {"seconds": floor32, "speedup": t_base / floor32, "gflops": flops / floor32 / 1e9, "softmax_seconds": soft32}
    rows["GEMM floor bf16"] = {"seconds": floor16, "speedup": t_base / floor16, "gflops": flops / floor16 / 1e9, "softmax_seconds": soft16}
    del model, model_bf16

    big: dict[str, dict] = {}
    if not args.skip_big:
        big_size = (64, 96) if args.tiny else tuple(args.big_size)
        big_tokens = tokens_for(big_size, vc.patch_size)
        # Floor of the pair: two images' FLOPs at the GEMM rate of this token count, measured right before each
        # run (the runs take minutes; the machine's speed can drift in between).
        pair_gemms = backbone_gemms(vc, big_tokens, 1)
        dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
        runs = [("fp32", "streaming"), ("bf16", "streaming")]
        if args.big_before:
            runs += [("fp32", "all-features"), ("bf16", "stock-modules")]
        for dtype, path in runs:
            cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_big_image.py"), "--dtype", dtype, "--path", path,
                   "--size", *map(str, big_size), "--json"]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            if args.tiny:
                cmd.append("--tiny")
            if args.model:
                cmd += ["--model", args.model]
            floor = 2 * gemm_floor(pair_gemms, dtypes[dtype], device, 1)
            softmax = 2 * softmax_seconds(vc, big_tokens, 1, dtypes[dtype], device)
            res = run_subprocess_json(cmd, timeout=7200)
            if "seconds" in res:
                res["floor_seconds"] = floor
                res["x_floor"] = res["seconds"] / floor
                res["softmax_seconds"] = softmax
                res["x_floor_with_softmax"] = res["seconds"] / (floor + softmax)
            big[f"{dtype} {path}"] = res

    cli = {"skipped": True} if args.skip_help else help_time(args.repeats)
    results = {
        "machine": info,
        "workload": {"n_distorted": args.n, "size": list(args.size), "batch": args.batch, "tokens_per_image": tokens,
                     "backbone_gflop": flops / 1e9, "repeats": args.repeats, "tiny": args.tiny, "model": args.model or "random"},
        "rows": rows,
        "big_pair": big,
        "afine_help": cli,
    }

    print(f"\n{args.n} distorted vs 1 reference at {h}x{w}, batch {args.batch} (speed-up vs baseline; of floor = floor/time)")
    print(f"{'row':<26}{'seconds':>9}{'speed-up':>10}{'of floor':>10}{'of floor+softmax':>18}  note")
    for name, row in rows.items():
        note = ""
        if "max_abs_dscore_vs_baseline" in row:
            note = f"max|dscore| vs baseline {row['max_abs_dscore_vs_baseline']:.2e}"
        elif "max_abs_dscore_vs_fp32" in row:
            note = f"max|dscore| vs fp32 {row['max_abs_dscore_vs_fp32']:.2e}"
        elif "gflops" in row:
            note = f"{row['gflops']:.0f} GFLOP/s; softmax over all scores {row['softmax_seconds']:.3f} s"
        of_floor = f"{row['of_floor']:.2f}" if "of_floor" in row else ""
        of_both = f"{row['of_floor_with_softmax']:.2f}" if "of_floor_with_softmax" in row else ""
        print(f"{name:<26}{row['seconds']:>9.3f}{row['speedup']:>9.2f}x{of_floor:>10}{of_both:>18}  {note}")
    for name, res in big.items():
        if "error" in res:
            print(f"big pair {name:<16} error: {res['error']}")
        else:
            print(f"big pair {name:<16}{res['seconds']:>8.1f} s  {res['x_floor']:.2f}x its GEMM floor ({res['floor_seconds']:.1f} s),"
                  f" {res['x_floor_with_softmax']:.2f}x GEMM floor + softmax ({res['softmax_seconds']:.1f} s)"
                  f"  peak RSS {res['peak_rss_mb']:.0f} MiB  ({res['size'][1]}x{res['size'][0]}, {res['tokens_per_image']} tokens/image)")
    if "seconds" in cli:
        print(f"{cli['command']}: {cli['seconds']:.2f} s")
    elif "error" in cli:
        print(f"{cli['command']}: error {cli['error']}")
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
