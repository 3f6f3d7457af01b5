"""A-FINE speed against the official computation, reproducibly: medians and spreads of interleaved rounds.

    python benchmarks/bench_scoring.py --out bench_scoring.json      # the full run (many minutes on 2 cores)
    python benchmarks/bench_scoring.py --quick --out /tmp/b.json     # a smoke test of the script (tiny model)
    python benchmarks/bench_scoring.py --cores 2 ...                 # pin the run (and its children) to 2 cores

Workload: one reference and ``--n`` distorted images at ``--size`` (synthetic 8-bit photos-like images, in memory
and as PNG files); full-size ViT-B/32 with random weights unless ``--model DIR`` (the compute is the same).

Rows, every one timed once per round, rounds interleaved (``--repeats``, at least 3), so that a machine whose speed
drifts moves them alike:
  official computation  the baseline: one pair per call, both images through CLIP every time, batch 1, fp32, all
                        12 block outputs kept and then reduced by the heads (how QuickInference/afine.py scores), on
                        tensors the processor made beforehand (its decoding and normalising are not timed)
  model forward         the model's own forward with the processor: ``model(**processor(distorted, reference))``
  AfineScorer           ``AfineScorer(model, batch_size=--batch).score(distorted, reference)``, the user path, on the
                        in-memory images with the default decoding threads, with ``num_workers=0``, and on the PNG
                        files with both (measure before changing the default)
  afine score (CLI)     ``afine score D1..Dn REF --model DIR -q`` in a fresh process on the PNG files: its scoring time
                        (the scorer's ``iter_pairs``) and, apart, the process's wall time (start-up and model load)
  bf16 rows             the model forward, the scorer and the CLI with the backbone in bf16 (heads fp32), and the
                        model forward through transformers' stock CLIP modules (``AFINE_STOCK_CLIP_MODULES=1``)
  GEMM floor            the backbone's FLOPs at the best GEMM rate on the model's own shapes, this machine, this
                        round (softmax, layer norms and activations free); "+ softmax" adds torch's softmax over
                        every attention score
  4K pair               one 3840x2160 pair per fresh subprocess (``bench_big_image.py``): time and peak memory of
                        the model path, the scorer and the CLI (``--skip-big`` to leave out)
  afine --help          the CLI's start-up, in a subprocess

Every time is printed as the median over the rounds with the min-max spread. Speed-ups are computed per round
against the baseline of the same round, then summarised the same way; so is the check that the scorer stays within
10 % of the model's own forward. The header states the date, the CPU (model, avx512_bf16 / AMX), the cores, the
torch version and build and its threads. Run on a quiet machine: time is meaningless when other jobs share the
cores (peak memory is not).
"""

from __future__ import annotations

import argparse
import copy
import datetime
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


_BUILD_KEYS = ("TORCH_VERSION", "BUILD_TYPE", "COMMIT_SHA", "BLAS_INFO", "USE_MKLDNN", "USE_OPENMP", "USE_CUDA")


def torch_build() -> dict:
    """The parts of ``torch.__config__.show()`` and ``parallel_info()`` that move CPU timings: libraries (MKL,
    oneDNN, OpenMP), CPU capability, key build settings, and the thread counts and parallel backend."""
    show = torch.__config__.show()
    libraries = [line.strip()[2:] for line in show.splitlines()
                 if line.strip().startswith("- ") and "Build settings" not in line and "C++ Version" not in line]
    settings = {}
    if "Build settings:" in show:
        for item in show.split("Build settings:", 1)[1].split(", "):
            key, _, value = item.strip().partition("=")
            if key in _BUILD_KEYS:
                settings[key] = value.strip()
    threads = {}
    for line in torch.__config__.parallel_info().splitlines():
        key, sep, value = line.strip().partition(" : ")
        if sep and ("threads" in key or "hardware_concurrency" in key or key.endswith("_NUM_THREADS")):
            threads[key] = value.strip()
        elif line.startswith("ATen parallel backend"):
            threads["backend"] = line.split(":", 1)[1].strip()
    return {"libraries": libraries, "settings": settings, "threads": threads}


def machine_info() -> dict:
    """CPU model, cores, torch threads, instruction sets relevant to fp32/bf16 GEMMs, library versions."""
    flags = _cpu_flags()
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    isa = {name: name in flags for name in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")}
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
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
    info["torch_build"] = torch_build()
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


# ------------------------------------------------------------------------------------------------ workload


def synthetic_images(n: int, size: tuple[int, int], seed: int = 0):
    """One smooth 8-bit reference (``H x W x 3``) and ``n`` noisier copies of it, as numpy arrays."""
    import numpy as np

    h, w = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / max(h, w)
    f = rng.uniform(1, 6, size=(3, 2))
    ref = np.stack([np.sin(6.28 * (f[c, 0] * xx + f[c, 1] * yy) + c) for c in range(3)], axis=-1) * 90 + 128
    ref = (ref + rng.normal(0, 6, ref.shape)).clip(0, 255).astype(np.uint8)
    dis = [(ref + rng.normal(0, 4 + 3 * k, ref.shape)).clip(0, 255).astype(np.uint8) for k in range(n)]
    return dis, ref


#: ``afine score`` in a fresh process, with its scoring (``AfineScorer.iter_pairs``) timed from the inside; the
#: last stdout line is JSON. Everything else is the real command line.
CLI_CHILD = r"""
import contextlib, io, json, sys, time
start = time.perf_counter()
from modeling_afine import cli_score, scoring
marks = {}
original = scoring.AfineScorer.iter_pairs
def iter_pairs(self, *args, **kwargs):
    marks["start"] = time.perf_counter()
    yield from original(self, *args, **kwargs)
    marks["end"] = time.perf_counter()
scoring.AfineScorer.iter_pairs = iter_pairs
with contextlib.redirect_stdout(io.StringIO()):
    code = cli_score.score_main(sys.argv[1:])
print(json.dumps({"exit_code": code, "scoring_seconds": marks["end"] - marks["start"],
                  "before_scoring_seconds": marks["start"] - start}))
"""


def run_cli(argv: list[str], timeout: float = 3600) -> dict:
    """One ``afine score`` process: its wall time, and the scoring time measured inside it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", CLI_CHILD, *argv], capture_output=True, text=True, env=env, timeout=timeout)
    wall = time.perf_counter() - start
    if res.returncode != 0 or not res.stdout.strip():
        raise RuntimeError(f"afine score failed: {res.stderr.strip()[-1000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    if out["exit_code"] != 0:
        raise RuntimeError(f"afine score exited with {out['exit_code']}: {res.stderr.strip()[-1000:]}")
    out["wall_seconds"] = wall
    return out


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _fmt(stat: dict, digits: int = 3, unit: str = "") -> str:
    return f"{stat['median']:.{digits}f}{unit} [{stat['min']:.{digits}f}-{stat['max']:.{digits}f}]"


# ------------------------------------------------------------------------------------------------ main

BASELINE = "official computation, fp32"
#: (scorer row, model-forward row) pairs checked against the 10 % budget
SCORER_VS_FORWARD = {
    "fp32": ("AfineScorer, fp32", "model forward + processor, fp32"),
    "bf16": ("AfineScorer, bf16", "model forward + processor, bf16"),
}
SCORER_BUDGET = 1.10


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10, help="distorted images scored against one reference")
    ap.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"))
    ap.add_argument("--batch", type=int, default=10, help="batch size of the scorer and the CLI")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds, at least 3 (medians and spreads)")
    ap.add_argument("--big-size", type=int, nargs=2, default=(2160, 3840), metavar=("H", "W"), help="the big pair")
    ap.add_argument("--skip-big", action="store_true", help="skip the 4K pair subprocesses")
    ap.add_argument("--big-before", action="store_true", help="also run the 4K pair through the pre-streaming path")
    ap.add_argument("--skip-cli", action="store_true", help="skip the `afine score` rows")
    ap.add_argument("--skip-help", action="store_true", help="skip timing `afine --help`")
    ap.add_argument("--model", default=None, help="converted A-FINE folder (default: random full-size weights)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default, or --cores)")
    ap.add_argument("--cores", type=int, default=0, help="pin this run and its subprocesses to the first N cores")
    ap.add_argument("--tiny", action="store_true", help="tiny backbone (the numbers mean nothing)")
    ap.add_argument("--quick", action="store_true", help="a smoke test: --tiny, 3 small images, 3 rounds")
    ap.add_argument("--out", default="bench_scoring.json", help="JSON results file")
    args = ap.parse_args(argv)
    if args.quick:
        args.tiny, args.n, args.size, args.batch, args.repeats = True, 3, (40, 72), 2, 3
    if args.repeats < 3:
        ap.error("--repeats must be at least 3: figures are medians and spreads of interleaved rounds")
    if args.cores:
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: args.cores]))
    if args.threads or args.cores:
        torch.set_num_threads(args.threads or args.cores)
    import tempfile

    from PIL import Image

    from modeling_afine import AfineImageProcessor, AfineScorer

    device = torch.device("cpu")
    info = machine_info()
    isa = info["isa"]
    print(f"date: {info['date']}")
    print(f"cpu: {info['cpu']}; {info['cores_available']} cores available of {info['cpu_count']}; "
          f"avx512_bf16={'yes' if isa['avx512_bf16'] else 'no'} amx={'yes' if isa['amx_bf16'] else 'no'} "
          f"(capability {info['torch_cpu_capability']})")
    build = info["torch_build"]
    print(f"torch {info['torch']} ({', '.join(f'{k}={v}' for k, v in build['settings'].items() if k != 'TORCH_VERSION')}); "
          f"transformers {info.get('transformers', '?')}; python {info['python']}")
    print("torch libraries: " + "; ".join(build["libraries"]))
    print("torch threads: " + ", ".join(f"{k} = {v}" for k, v in build["threads"].items()))

    model = build_model(args.model, "fp32", args.tiny)
    model_bf16 = copy.deepcopy(model)
    model_bf16.vision_model.to(torch.bfloat16)
    cfg = model.config
    processor = AfineImageProcessor(image_mean=cfg.image_mean, image_std=cfg.image_std, size_multiple=cfg.size_multiple)
    vc = cfg.vision_config
    h, w = args.size
    dis_images, ref_image = synthetic_images(args.n, (h, w))
    tmp = tempfile.TemporaryDirectory(prefix="afine-bench-")
    folder = Path(tmp.name)
    dis_files = [str(folder / f"dis{i:03d}.png") for i in range(args.n)]
    ref_file = str(folder / "ref.png")
    for array, path in zip([*dis_images, ref_image], [*dis_files, ref_file]):
        Image.fromarray(array).save(path)
    tensors = processor(dis_images, ref_image)  # the baseline's input, made outside its timing
    dis_t, ref_t = tensors["distorted"], tensors["reference"]
    tokens = tokens_for(args.size, vc.patch_size)

    def scorer(m, workers=None):
        return AfineScorer(m, processor=processor, batch_size=args.batch, num_workers=workers)

    def forward(m):
        return m(**processor(dis_images, ref_image)).score

    s32, s32_0, s16 = scorer(model), scorer(model, 0), scorer(model_bf16)
    runs = {
        BASELINE: lambda: official_style(model, dis_t, ref_t),
        "model forward + processor, fp32": lambda: forward(model),
        "AfineScorer, fp32": lambda: s32.score(dis_images, ref_image).score,
        "AfineScorer, fp32, num_workers=0": lambda: s32_0.score(dis_images, ref_image).score,
        "AfineScorer, fp32, PNG files": lambda: s32.score(dis_files, ref_file).score,
        "AfineScorer, fp32, PNG files, num_workers=0": lambda: s32_0.score(dis_files, ref_file).score,
        "model forward + processor, bf16": lambda: forward(model_bf16),
        "AfineScorer, bf16": lambda: s16.score(dis_images, ref_image).score,
        "bf16, stock CLIP modules (model forward)": stock_modules(lambda: forward(model_bf16)),
    }
    cli_runs: dict[str, list[str]] = {}
    if not args.skip_cli:
        model_dir = args.model
        if model_dir is None:
            model_dir = str(folder / "model")
            model.save_pretrained(model_dir)
        base = [*dis_files, ref_file, "--model", model_dir, "--batch-size", str(args.batch), "--device", "cpu", "-q"]
        cli_runs = {"afine score (CLI), fp32": base + ["--dtype", "float32"],
                    "afine score (CLI), bf16": base + ["--dtype", "bfloat16"]}

    # Floors of the workload: the distorted batches plus one reference pass.
    gemms = []
    for i in range(0, args.n, args.batch):
        gemms += backbone_gemms(vc, tokens, min(args.batch, args.n - i))
    gemms += backbone_gemms(vc, tokens, 1)
    flops = gemm_flops(gemms)
    batches = [min(args.batch, args.n - i) for i in range(0, args.n, args.batch)] + [1]
    floors = {
        "GEMM floor fp32": lambda: gemm_floor(gemms, torch.float32, device, 1),
        "GEMM floor bf16": lambda: gemm_floor(gemms, torch.bfloat16, device, 1),
        "softmax fp32": lambda: sum(softmax_seconds(vc, tokens, b, torch.float32, device) for b in batches),
        "softmax bf16": lambda: sum(softmax_seconds(vc, tokens, b, torch.bfloat16, device) for b in batches),
    }

    samples: dict[str, list[float]] = {name: [] for name in [*runs, *cli_runs, *floors]}
    cli_wall: dict[str, list[float]] = {name: [] for name in cli_runs}
    with torch.inference_mode():
        values = {name: fn() for name, fn in runs.items()}  # warm-up, and the scores for the agreement checks
    for argv_ in cli_runs.values():
        run_cli(argv_)  # warm-up (file cache)
    print(f"\n{args.repeats} interleaved rounds of {len(samples)} measurements ...", flush=True)
    for _ in range(args.repeats):
        with torch.inference_mode():
            for name, fn in runs.items():
                start = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - start)
        for name, argv_ in cli_runs.items():
            res = run_cli(argv_)
            samples[name].append(res["scoring_seconds"])
            cli_wall[name].append(res["wall_seconds"])
        for name, fn in floors.items():
            samples[name].append(fn())
    tmp.cleanup()

    rounds = range(args.repeats)
    rows: dict[str, dict] = {}
    for name in [*runs, *cli_runs]:
        row = {"seconds": spread(samples[name]), "samples": samples[name],
               "speedup": spread([samples[BASELINE][r] / samples[name][r] for r in rounds])}
        precision = "bf16" if "bf16" in name else "fp32"
        if name != BASELINE:
            floor, soft = (statistics.median(samples[f"{k} {precision}"]) for k in ("GEMM floor", "softmax"))
            row["of_floor"] = floor / row["seconds"]["median"]
            row["of_floor_with_softmax"] = (floor + soft) / row["seconds"]["median"]
        if name in values:
            if precision == "fp32":
                row["max_abs_dscore_vs_baseline"] = float((values[name] - values[BASELINE]).abs().max())
            else:
                row["max_abs_dscore_vs_fp32"] = float((values[name] - values["AfineScorer, fp32"]).abs().max())
        if name in cli_wall:
            row["wall_seconds"] = spread(cli_wall[name])
            row["wall_minus_scoring_seconds"] = spread([cli_wall[name][r] - samples[name][r] for r in rounds])
        rows[name] = row
    for name in floors:
        rows[name] = {"seconds": spread(samples[name])}
        if name.startswith("GEMM"):
            rows[name]["gflops"] = flops / rows[name]["seconds"]["median"] / 1e9
    checks = {}
    for precision, (ours, forward_row) in SCORER_VS_FORWARD.items():
        ratio = spread([samples[ours][r] / samples[forward_row][r] for r in rounds])
        checks[f"scorer / model forward, {precision}"] = {**ratio, "budget": SCORER_BUDGET, "ok": ratio["median"] <= SCORER_BUDGET}
    for label, a, b in (("in-memory", "AfineScorer, fp32", "AfineScorer, fp32, num_workers=0"),
                        ("PNG files", "AfineScorer, fp32, PNG files", "AfineScorer, fp32, PNG files, num_workers=0")):
        checks[f"default decoding threads ({s32.num_workers}) / num_workers=0, {label}"] = spread(
            [samples[a][r] / samples[b][r] for r in rounds])
    del model, model_bf16, s32, s32_0, s16

    big: dict[str, dict] = {}
    if not args.skip_big:
        big = run_big_pairs(args, vc, device)

    cli = {"skipped": True} if args.skip_help else help_time(args.repeats)
    results = {
        "machine": info,
        "workload": {"n_distorted": args.n, "size": list(args.size), "batch": args.batch, "tokens_per_image": tokens,
                     "backbone_gflop": flops / 1e9, "repeats": args.repeats, "tiny": args.tiny,
                     "model": args.model or "random", "scorer_default_workers": s32_workers(checks)},
        "rows": rows,
        "checks": checks,
        "big_pair": big,
        "afine_help": cli,
    }
    print_report(args, rows, checks, big, cli)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    return results


def s32_workers(checks: dict) -> int:
    """The scorer's default number of decoding threads, as named in the checks."""
    name = next(k for k in checks if k.startswith("default decoding threads"))
    return int(name.split("(", 1)[1].split(")", 1)[0])


def run_big_pairs(args, vc, device: torch.device) -> dict:
    """The big pair through the model, the scorer and the CLI, each in a fresh process (time, memory)."""
    big: dict[str, dict] = {}
    big_size = (64, 96) if args.tiny else tuple(args.big_size)
    big_tokens = tokens_for(big_size, vc.patch_size)
    pair_gemms = backbone_gemms(vc, big_tokens, 1)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    runs = [("fp32", "streaming"), ("fp32", "scorer"), ("fp32", "cli"), ("bf16", "streaming")]
    if args.big_before:
        runs += [("fp32", "all-features"), ("bf16", "stock-modules")]
    for dtype, path in runs:
        cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_big_image.py"), "--dtype", dtype, "--path", path,
               "--size", *map(str, big_size), "--json"]
        if args.threads or args.cores:
            cmd += ["--threads", str(args.threads or args.cores)]
        if args.tiny:
            cmd.append("--tiny")
        if args.model:
            cmd += ["--model", args.model]
        floor = 2 * gemm_floor(pair_gemms, dtypes[dtype], device, 1)
        softmax = 2 * softmax_seconds(vc, big_tokens, 1, dtypes[dtype], device)
        res = run_subprocess_json(cmd, timeout=7200)
        if "seconds" in res and path != "cli":  # the CLI's time includes loading the model
            res["floor_seconds"] = floor
            res["x_floor"] = res["seconds"] / floor
            res["softmax_seconds"] = softmax
            res["x_floor_with_softmax"] = res["seconds"] / (floor + softmax)
        big[f"{dtype} {path}"] = res
    model_path = big.get("fp32 streaming", {})
    for user in ("fp32 scorer", "fp32 cli"):
        if "peak_above_model_mb" in model_path and "peak_above_model_mb" in big.get(user, {}):
            big[user]["working_set_vs_model_path"] = big[user]["peak_above_model_mb"] / model_path["peak_above_model_mb"]
    return big


def print_report(args, rows: dict, checks: dict, big: dict, cli: dict) -> None:
    h, w = args.size
    print(f"\n{args.n} distorted vs 1 reference at {h}x{w}, batch {args.batch}; medians [min-max] of {args.repeats} "
          "interleaved rounds; speed-up per round against the baseline of that round")
    print(f"{'row':<46}{'seconds':>24}{'speed-up':>24}{'of floor':>10}{'+softmax':>10}  note")
    for name, row in rows.items():
        if name.startswith(("GEMM", "softmax")):
            continue
        note = ""
        if "max_abs_dscore_vs_baseline" in row:
            note = f"max|dscore| vs baseline {row['max_abs_dscore_vs_baseline']:.2e}"
        elif "max_abs_dscore_vs_fp32" in row:
            note = f"max|dscore| vs fp32 scorer {row['max_abs_dscore_vs_fp32']:.2e}"
        if "wall_seconds" in row:
            note = f"scoring only; process wall {_fmt(row['wall_seconds'], 2, ' s')}"
        of_floor = f"{row['of_floor']:.2f}" if "of_floor" in row else ""
        of_both = f"{row['of_floor_with_softmax']:.2f}" if "of_floor_with_softmax" in row else ""
        print(f"{name:<46}{_fmt(row['seconds']) + ' s':>24}{_fmt(row['speedup'], 2) + 'x':>24}{of_floor:>10}{of_both:>10}  {note}")
    for name in ("GEMM floor fp32", "GEMM floor bf16"):
        row, soft = rows[name], rows[name.replace("GEMM floor", "softmax")]
        print(f"{name:<46}{_fmt(row['seconds']) + ' s':>24}  {row['gflops']:.0f} GFLOP/s; softmax over all scores "
              f"{_fmt(soft['seconds'])} s")
    print()
    for name, check in checks.items():
        verdict = ""
        if "budget" in check:
            verdict = f"  {'OK' if check['ok'] else 'OVER'}: within {round((check['budget'] - 1) * 100)} % of the model's own forward"
        print(f"check {name}: {_fmt(check)}{verdict}")
    for name, res in big.items():
        if "error" in res:
            print(f"big pair {name:<18} error: {res['error']}")
            continue
        line = (f"big pair {name:<18}{res['seconds']:>8.1f} s  working set {res['peak_above_model_mb']:.0f} MiB above the "
                f"loaded model (peak {res['peak_rss_mb']:.0f} MiB)")
        if "x_floor" in res:
            line += f"  {res['x_floor']:.2f}x GEMM floor, {res['x_floor_with_softmax']:.2f}x floor + softmax"
        if "working_set_vs_model_path" in res:
            line += f"  {res['working_set_vs_model_path']:.2f}x the model path's working set"
        if name.endswith("cli"):
            line += "  (time includes loading the model)"
        print(line)
    if "seconds" in cli:
        print(f"{cli['command']}: {cli['seconds']:.2f} s")
    elif "error" in cli:
        print(f"{cli['command']}: error {cli['error']}")


if __name__ == "__main__":
    main()
