"""The command line at scale: instant start-up, resumable output keyed on resolved paths, interruption,
unavailable models/devices, background decoding that changes no number, and sharded runs over processes."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_afine import sharding
from modeling_afine.scoring import AfineScorer, DeviceNotAvailableError, ModelNotAvailableError, resolve_device

from .conftest import degrade
from .test_scorer_cli import run_inproc

REPO = Path(__file__).resolve().parents[2]
FIELDS = ("score", "score_raw", "fidelity", "naturalness_distorted", "naturalness_reference")


@pytest.fixture(scope="module")
def folder(tmp_path_factory, photos):
    """data/: two references with three distorted images each, two one-off pairs, one broken file; a CSV."""
    d = tmp_path_factory.mktemp("scale") / "data"
    d.mkdir()
    rows = []
    for r, name in enumerate(("coffee_70x100", "chelsea_96x160")):
        ref = photos[name]
        Image.fromarray(ref).save(d / f"ref{r}.png")
        for k in range(3):
            Image.fromarray(degrade(ref, 2 + k, noise=2, seed=k)).save(d / f"dis{r}_{k}.png")
            rows.append(f"dis{r}_{k}.png,ref{r}.png")
    for s, name in enumerate(("astronaut_224", "rocket_130x75")):
        img = photos[name][:64, :64]
        Image.fromarray(img).save(d / f"own_ref{s}.png")
        Image.fromarray(degrade(img, 3, seed=s)).save(d / f"own_dis{s}.png")
        rows.append(f"own_dis{s}.png,own_ref{s}.png")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    rows.insert(4, "broken.png,ref1.png")
    (d / "pairs.csv").write_text("distorted,reference\n" + "\n".join(rows) + "\n")
    return d


def _python(code: str, env_extra: dict | None = None, cwd=REPO, timeout=120) -> subprocess.CompletedProcess:
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)


def _lines(path) -> list[dict]:
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


# ------------------------------------------------------------------ start-up


_PROBE = """
import json, sys, time
t = time.perf_counter()
from modeling_afine.cli import main
try:
    code = main({args!r})
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in ("torch", "transformers", "diffusers", "datasets", "accelerate") if m in sys.modules)
print(json.dumps({{"code": code, "heavy": heavy, "seconds": time.perf_counter() - t}}), file=sys.stderr)
"""


@pytest.mark.parametrize(
    "args",
    [["--help"], ["score", "--help"], ["convert", "--help"], ["data", "--help"], ["enhancer", "--help"], ["train", "--help"]],
)
def test_help_does_not_import_torch_or_transformers(args):
    res = _python(_PROBE.format(args=args))
    probe = json.loads(res.stderr.strip().splitlines()[-1])
    assert probe["code"] == 0, res.stderr
    assert probe["heavy"] == [], f"afine {' '.join(args)} imported {probe['heavy']}"
    assert "usage" in res.stdout.lower()


def test_offline_default_model_message_without_torch(folder, tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "AFINE_CACHE": str(tmp_path / "c")}
    res = _python(_PROBE.format(args=["score", str(folder / "dis0_0.png"), str(folder / "ref0.png")]), env)
    probe = json.loads(res.stderr.strip().splitlines()[-1])
    assert probe["code"] == 2 and probe["heavy"] == [], res.stderr
    assert "afine convert" in res.stderr and "Traceback" not in res.stderr
    assert probe["seconds"] < 2.0


def test_import_package_is_cheap_and_auto_classes_still_work(converted_dir):
    code = f"""
import sys
import modeling_afine
assert "torch" not in sys.modules and "transformers" not in sys.modules, "import modeling_afine is not lazy"
from transformers import AutoConfig, AutoImageProcessor, AutoModel
model = AutoModel.from_pretrained({str(converted_dir)!r})
proc = AutoImageProcessor.from_pretrained({str(converted_dir)!r})
cfg = AutoConfig.from_pretrained({str(converted_dir)!r})
print(type(model).__module__, type(model).__name__, type(proc).__name__, type(cfg).__name__)
"""
    res = _python(code)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["modeling_afine.modeling_afine", "AfineModel", "AfineImageProcessor", "AfineConfig"]


@pytest.mark.parametrize(
    "first",
    [
        "from transformers import AutoModel, AutoConfig, AutoImageProcessor\nimport modeling_afine",  # registries first
        "from modeling_afine.modeling_afine import AfineModel",  # the model module first (registries load inside it)
    ],
)
def test_auto_registration_in_any_import_order(first):
    code = first + """
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING
from transformers.models.auto.modeling_auto import MODEL_MAPPING
from modeling_afine import AfineConfig, AfineImageProcessor, AfineModel
assert CONFIG_MAPPING["afine"] is AfineConfig
assert MODEL_MAPPING[AfineConfig] is AfineModel
assert IMAGE_PROCESSOR_MAPPING[AfineConfig]["pil"] is AfineImageProcessor
print("registered")
"""
    res = _python(code)
    assert res.returncode == 0 and res.stdout.strip() == "registered", res.stderr[-2000:]


# ------------------------------------------------------------------ unavailable model / device


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_on_cpu_torch_is_a_one_line_exit_2(converted_dir, folder, capsys):
    for device, words in (("cuda", "CUDA"), ("cuda:3", "CUDA"), ("gpu", "unknown device")):
        code, out, err = run_inproc(capsys, "score", folder / "dis0_0.png", folder / "ref0.png", "--model", converted_dir, "--device", device)
        assert code == 2, (device, err)
        assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(DeviceNotAvailableError, match="no CUDA support|no CUDA device"):
        resolve_device("cuda:1")
    if not torch.backends.mps.is_available():
        with pytest.raises(DeviceNotAvailableError, match="MPS"):
            resolve_device("mps")
    assert resolve_device("cpu") == torch.device("cpu") and resolve_device("auto") == torch.device("cpu")


def test_repo_id_offline_fails_fast_and_uses_the_local_cache(converted_dir, tmp_path, monkeypatch):
    from modeling_afine.model_source import resolve_model_dir
    from modeling_afine.scoring import load_afine

    import huggingface_hub.constants

    hub = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))  # read once, at import
    # Not in the cache, with HF_HUB_OFFLINE and with an unreachable endpoint: fail at once with the how-to.
    for offline in ("1", "0"):
        monkeypatch.setenv("HF_HUB_OFFLINE", offline)
        monkeypatch.setenv("TRANSFORMERS_OFFLINE", offline)
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
        t = time.perf_counter()
        with pytest.raises(ModelNotAvailableError, match="afine convert") as info:
            load_afine("some-org/afine-tiny")
        assert time.perf_counter() - t < 2.0
        assert "some-org/afine-tiny" in str(info.value) and "Retrying" not in str(info.value)
    # A snapshot in the local Hub cache is used offline.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = hub / "models--some-org--afine-tiny" / "snapshots" / ("0" * 40)
    shutil.copytree(converted_dir, snapshot)
    (hub / "models--some-org--afine-tiny" / "refs").mkdir()
    (hub / "models--some-org--afine-tiny" / "refs" / "main").write_text("0" * 40)
    assert Path(resolve_model_dir("some-org/afine-tiny")) == snapshot
    model, _ = load_afine("some-org/afine-tiny")
    assert type(model).__name__ == "AfineModel"


# ------------------------------------------------------------------ resume, one record per pair, interruption


def test_rerun_from_another_folder_adds_nothing_and_keeps_one_record_per_pair(converted_dir, folder, tmp_path, capsys, monkeypatch):
    work = tmp_path / "work"
    shutil.copytree(folder, work / "data")
    (work / "elsewhere" / "deeper").mkdir(parents=True)
    monkeypatch.chdir(work)
    code, _, err = run_inproc(capsys, "score", "--pairs", "data/pairs.csv", "-o", "scores.jsonl", "--model", converted_dir, "-q")
    assert code == 1 and "broken.png" in err
    first = (work / "scores.jsonl").read_text()
    recs = [json.loads(x) for x in first.splitlines()]
    assert len(recs) == 9 and sum("error" in r for r in recs) == 1
    # input order, paths as given plus the resolved paths that resume is keyed on
    csv_rows = [line.split(",") for line in (work / "data" / "pairs.csv").read_text().splitlines()[1:]]
    assert [[r["distorted"], r["reference"]] for r in recs] == csv_rows
    assert recs[0]["distorted_path"] == str((work / "data" / "dis0_0.png").resolve())

    # the same CSV and output from two other folders: nothing recomputed, nothing added, the error not duplicated
    for cwd, csv_arg, out_arg in (("elsewhere", "../data/pairs.csv", "../scores.jsonl"), ("elsewhere/deeper", work / "data" / "pairs.csv", work / "scores.jsonl")):
        monkeypatch.chdir(work / cwd)
        code, out, err = run_inproc(capsys, "score", "--pairs", csv_arg, "-o", out_arg, "--model", converted_dir, "-q", "--json")
        assert code == 1 and json.loads(out) == [] and err.count("broken.png") == 1
        again = _lines(work / "scores.jsonl")
        assert len(again) == 9 and sum("error" in r for r in again) == 1  # the retried error replaced the old one
        assert [r for r in again if "error" not in r] == [r for r in recs if "error" not in r]

    # the broken file is fixed: its error record is replaced by the score, still one record per pair
    shutil.copy(work / "data" / "dis1_0.png", work / "data" / "broken.png")
    code, out, err = run_inproc(capsys, "score", "--pairs", work / "data" / "pairs.csv", "-o", work / "scores.jsonl", "--model", converted_dir, "-q", "--json")
    assert code == 0, err
    assert [r["distorted"] for r in json.loads(out)] == ["broken.png"]
    final = _lines(work / "scores.jsonl")
    assert len(final) == 9 and not any("error" in r for r in final)
    assert final[4]["distorted"] == "broken.png" and final[4]["score"] == pytest.approx(final[3]["score"], rel=1e-5)
    assert final[:4] == recs[:4] and final[5:] == recs[5:]


def test_ctrl_c_saves_what_is_done_and_says_how_to_resume(converted_dir, folder, tmp_path, capsys, monkeypatch):
    original = AfineScorer.iter_pairs

    def interrupted_after_three(self, pairs, **kwargs):
        for n, item in enumerate(original(self, pairs, **kwargs)):
            if n == 3:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(AfineScorer, "iter_pairs", interrupted_after_three)
    out = tmp_path / "scores.jsonl"
    code, stdout, err = run_inproc(capsys, "score", "--pairs", folder / "pairs.csv", "-o", out, "--model", converted_dir, "-q")
    assert code == 130
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2  # (a broken-file line may come first)
    last = err.strip().splitlines()[-1]
    assert "interrupted" in last and "3 new result(s) saved" in last and str(out) in last and "resume" in last
    assert len(_lines(out)) == 3
    monkeypatch.setattr(AfineScorer, "iter_pairs", original)
    code, stdout, err = run_inproc(capsys, "score", "--pairs", folder / "pairs.csv", "-o", out, "--model", converted_dir, "-q")
    assert code == 1 and len(_lines(out)) == 9

    monkeypatch.setattr(AfineScorer, "iter_pairs", interrupted_after_three)
    code, _, err = run_inproc(capsys, "score", folder / "dis0_0.png", folder / "dis0_1.png", folder / "dis0_2.png", folder / "dis1_0.png", folder / "ref0.png", "--model", converted_dir)
    assert code == 130 and "nothing was saved" in err and "--output" in err


def test_quiet_silences_loading_and_conversion_bars(official_pth, folder, tmp_path):
    env = {"AFINE_CACHE": str(tmp_path / "cache")}
    res = _python(
        "import sys; from modeling_afine.cli import main; "
        f"sys.exit(main(['score', {str(folder / 'dis0_0.png')!r}, {str(folder / 'ref0.png')!r}, '--model', {str(official_pth)!r}, '-q']))",
        env,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert list((tmp_path / "cache" / "converted").iterdir())  # it did convert
    assert "Writing model shards" not in res.stderr and "Loading weights" not in res.stderr and "%|" not in res.stderr


# ------------------------------------------------------------------ background decoding and shared references


def test_background_decoding_changes_no_number(model, folder):
    rows = [line.split(",") for line in (folder / "pairs.csv").read_text().splitlines()[1:]]
    pairs = [(folder / d, folder / r) for d, r in rows]
    plain = dict(AfineScorer(model, batch_size=2, num_workers=0).iter_pairs(pairs))
    threaded = dict(AfineScorer(model, batch_size=2, num_workers=3).iter_pairs(pairs))
    assert sorted(plain) == sorted(threaded) == list(range(len(pairs)))
    assert isinstance(plain[4], Exception) and isinstance(threaded[4], Exception) and str(plain[4]) == str(threaded[4])
    for i in plain:
        if i != 4:
            for f in FIELDS:
                assert torch.equal(plain[i][f], threaded[i][f]), (i, f)
    # iter_scores (shared reference) also identical with and without threads, and equal to iter_pairs
    shared = [folder / f"dis0_{k}.png" for k in range(3)]
    a = AfineScorer(model, batch_size=2, num_workers=0).score(shared, folder / "ref0.png")
    b = AfineScorer(model, batch_size=2, num_workers=2).score(shared, folder / "ref0.png")
    assert torch.equal(a.score, b.score) and torch.equal(a.fidelity, b.fidelity)
    assert torch.equal(a.score, torch.stack([plain[i]["score"] for i in range(3)]))


def test_iter_pairs_matches_one_pair_at_a_time(model, processor, folder):
    rows = [line.split(",") for line in (folder / "pairs.csv").read_text().splitlines()[1:]]
    pairs = [(folder / d, folder / r) for d, r in rows]
    calls = []
    original = model.encode_reference
    got = dict(AfineScorer(model, batch_size=4).iter_pairs(pairs))
    for i, (d, r) in enumerate(pairs):
        if i == 4:
            assert "broken.png" in str(got[i])
            continue
        with torch.no_grad():
            one = model(**processor(d, r))
        for f in FIELDS:
            torch.testing.assert_close(got[i][f], getattr(one, f)[0], rtol=1e-5, atol=1e-5)
    # a shared reference whose images span several batches is encoded once; one whose images fit one batch runs
    # with that batch (the model's own path), and the one-off pairs go through batched passes: no encoding
    model.encode_reference = lambda x: calls.append(tuple(x.shape)) or original(x)
    try:
        dict(AfineScorer(model, batch_size=1).iter_pairs(pairs))
        assert len(calls) == 2
        calls.clear()
        dict(AfineScorer(model, batch_size=4).iter_pairs(pairs))
        assert calls == []
    finally:
        del model.encode_reference
    # an unreadable reference fails each of its pairs, and nothing else
    bad = [(folder / "dis0_0.png", folder / "missing.png"), (folder / "dis0_1.png", folder / "missing.png"), pairs[0]]
    res = dict(AfineScorer(model).iter_pairs(bad))
    assert all("missing.png" in str(res[i]) for i in (0, 1)) and not isinstance(res[2], Exception)


# ------------------------------------------------------------------ sharding


def test_sharding_convention_resumes_across_world_sizes(converted_dir, folder, tmp_path, capsys, monkeypatch):
    """Ranks run one after the other in this process (the barrier is a no-op here; the real
    multi-process run is the slow test below)."""

    class NoGroup:
        def __init__(self, world, **kwargs):
            self.world = world

        def barrier(self):
            pass

        def close(self):
            pass

    from modeling_afine import cli_score

    monkeypatch.setattr(cli_score, "ProcessGroup", NoGroup)
    args = ["score", "--pairs", folder / "pairs.csv", "--model", converted_dir, "-q", "--batch-size", "1"]
    single = tmp_path / "single.jsonl"
    code, _, _ = run_inproc(capsys, *args, "-o", single)
    assert code == 1

    out = tmp_path / "sharded.jsonl"

    def rank(r, w):
        monkeypatch.setenv("RANK", str(r))
        monkeypatch.setenv("WORLD_SIZE", str(w))
        monkeypatch.setenv("LOCAL_RANK", str(r))
        return run_inproc(capsys, *args, "-o", out)

    # a 3-process run where only rank 2 finished: its part survives
    code, _, _ = rank(2, 3)
    assert code == 0 and not out.exists()
    part = sharding.parts_dir(out) / "rank-00002-of-00003.jsonl"
    assert [r["distorted"] for r in _lines(part)] == ["dis0_2.png", "dis1_1.png", "own_dis1.png"]  # input rows 2, 5, 8
    marked = _lines(part)
    marked[0]["score"] = 1234.5  # if it were recomputed, this mark would disappear
    part.write_text("".join(json.dumps(r) + "\n" for r in marked))
    # resumed with 2 processes: rank 1 first (no merge), then rank 0 merges everything in input order
    code, _, err = rank(1, 2)
    assert code == 0 and not out.exists()
    assert sharding.part_path(out, sharding.World(1, 2)).is_file()
    code, _, err = rank(0, 2)
    assert code == 0 and "1 failed" in err
    assert not sharding.parts_dir(out).exists()
    merged, expected = _lines(out), _lines(single)
    assert [(r["distorted"], r["reference"]) for r in merged] == [(r["distorted"], r["reference"]) for r in expected]
    assert merged[2]["score"] == 1234.5
    merged[2]["score"] = expected[2]["score"]
    assert merged == expected


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_with_accelerate_equal_one_process(converted_dir, folder, tmp_path):
    """`accelerate launch -m modeling_afine score` on 2 CPU processes (gloo): the merged output equals one process."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    score = ["-m", "modeling_afine", "score", "--pairs", str(folder / "pairs.csv"), "--model", str(converted_dir), "-q", "--batch-size", "1"]
    single = subprocess.run([sys.executable, *score, "-o", str(tmp_path / "single.jsonl")], env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 1, single.stderr[-2000:]  # the broken pair
    accelerate = Path(sys.executable).with_name("accelerate")
    launch = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
              "--dynamo_backend", "no", "--main_process_port", str(_free_port())]
    res = subprocess.run([*launch, *score, "-o", str(tmp_path / "multi.jsonl")], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert "over 2 processes; 1 failed" in res.stderr and "Traceback" not in res.stderr
    assert (tmp_path / "multi.jsonl").read_text() == (tmp_path / "single.jsonl").read_text()
    assert not sharding.parts_dir(tmp_path / "multi.jsonl").exists()


@pytest.mark.slow
def test_real_sigint_mid_run_is_one_line_and_resumable(converted_dir, tmp_path):
    """A real SIGINT (Ctrl-C) while batches are being decoded in threads and scored: exit 130, one line, no traceback."""
    import signal

    rng = np.random.default_rng(0)
    rows = []
    for i in range(600):
        img = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(img).save(tmp_path / f"r{i}.png")
        Image.fromarray(255 - img).save(tmp_path / f"d{i}.png")
        rows.append(f"d{i}.png,r{i}.png")
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "scores.jsonl"
    cmd = [sys.executable, "-m", "modeling_afine", "score", "--pairs", str(tmp_path / "pairs.csv"), "-o", str(out),
           "--model", str(converted_dir), "-q", "--batch-size", "1", "--workers", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (out.exists() and out.stat().st_size > 0):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err[-2000:]
    assert "interrupted" in err and "resume" in err
    saved = _lines(out)
    assert 0 < len(saved) < 600
    rerun = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    final = _lines(out)
    assert [r["distorted"] for r in final] == [f"d{i}.png" for i in range(600)]  # one record per pair, input order
    assert all(r in final for r in saved)
