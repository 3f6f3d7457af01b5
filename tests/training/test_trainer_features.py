"""What the Trainer-based stages add: gradient accumulation, trackers, Hub-ready exports, the official
naturalness-calibration flow, shipped triplets and clear data errors."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tests.datasets.conftest import make_classic, make_diffiqa

from .conftest import reset_accelerate, run_train, tiny_model

REPO = Path(__file__).resolve().parents[2]
BIG_LR = {"stage": 1, "lr": {"vision_model": 1e-3, "natural_head": 1e-3}}


def _common(txt, images, out, steps="1", batch="4"):
    return ["--output_dir", str(out), "--triplets", f"{txt}:{images}", "--max_steps", steps,
            "--per_device_train_batch_size", batch, "--dataloader_num_workers", "0", "--disable_tqdm", "true", "--use_cpu"]


def _log(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def init_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("init") / "tiny"
    tiny_model(seed=11).save_pretrained(str(path))
    return path


@pytest.mark.filterwarnings("ignore:`gradient_checkpointing` is deprecated:FutureWarning")
def test_gradient_accumulation_equals_one_large_batch(tmp_path, init_dir, triplet_txt):
    """2 micro-batches of 2 give the gradient, loss and update of one batch of 4 (the same 4 triplets); so does
    a run with --gradient_checkpointing."""
    from transformers import TrainerCallback

    from training.train_afine import parse_args, train

    class Grab(TrainerCallback):
        grads: dict = {}

        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}

    txt, images = triplet_txt
    cfg = tmp_path / "s1.json"
    cfg.write_text(json.dumps(BIG_LR))
    runs = {}
    for name, batch, accum, extra in (("one", "4", "1", []), ("accum", "2", "2", []),
                                      ("checkpointing", "4", "1", ["--gradient_checkpointing"])):
        grab = Grab()
        out = tmp_path / name
        argv = ["--config", str(cfg), "--init", str(init_dir), "--logging_steps", "1",
                "--gradient_accumulation_steps", accum] + extra + _common(txt, images, out, batch=batch)
        try:
            assert train(parse_args(argv), callbacks=[grab]) == 0
        finally:
            reset_accelerate()
        runs[name] = (grab.grads, _log(out)[-1], tiny_model().from_pretrained(str(out)).state_dict())
    (g1, log1, s1), (g2, log2, s2) = runs["one"], runs["accum"]
    assert g1.keys() == g2.keys() and len(g1) > 10
    for k in g1:
        torch.testing.assert_close(g2[k], g1[k], rtol=1e-4, atol=1e-7, msg=k)
    # the logged loss is the mean over the effective batch, not the sum of two micro-batch means
    assert log2["loss"] == pytest.approx(log1["loss"], rel=1e-6)
    assert log2["loss_12"] == pytest.approx(log1["loss_12"], rel=1e-6)
    for k in s1:
        if k != "natural_head.proj_head.2.bias":  # true gradient 0: Adam normalises rounding noise (test_ddp)
            torch.testing.assert_close(s2[k], s1[k], rtol=1e-3, atol=3e-5, msg=k)
    info = json.loads((tmp_path / "accum" / "training_info.json").read_text())
    assert info["gradient_accumulation_steps"] == 2
    # activation (gradient) checkpointing of the CLIP blocks recomputes the same graph: the same gradients
    g3 = runs["checkpointing"][0]
    assert g3.keys() == g1.keys()
    for k in g1:
        torch.testing.assert_close(g3[k], g1[k], rtol=1e-5, atol=1e-8, msg=k)


def test_tensorboard_run_writes_the_logged_scalars(tmp_path, init_dir, triplet_txt):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    txt, images = triplet_txt
    out = tmp_path / "run"
    assert run_train(["--stage", "1", "--init", str(init_dir), "--report_to", "tensorboard", "--logging_steps", "1",
                      "--val_triplets", f"{txt}:{images}", "--eval_steps", "2", "--gradient_accumulation_steps", "2"]
                     + _common(txt, images, out, steps="2", batch="2")) == 0
    event_dirs = {p.parent for p in (out / "runs").rglob("events.out.tfevents.*")}
    assert len(event_dirs) == 1
    acc = EventAccumulator(str(event_dirs.pop()))
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/loss_12", "train/loss_1ref", "train/loss_2ref", "train/learning_rate/vision_model",
            "eval/2afc/Triplet"} <= scalars
    log = _log(out)
    train_lines = [r for r in log if "loss" in r]
    assert [e.step for e in acc.Scalars("train/loss")] == [r["step"] for r in train_lines] == [1, 2]
    for event, rec in zip(acc.Scalars("train/loss"), train_lines):
        assert event.value == pytest.approx(rec["loss"], rel=1e-6)
    for event, rec in zip(acc.Scalars("train/learning_rate/vision_model"), train_lines):
        assert event.value == pytest.approx(rec["lr"]["vision_model"], rel=1e-6)
    (val,) = [r for r in log if "val_2afc" in r]
    assert acc.Scalars("eval/2afc/Triplet")[0].value == pytest.approx(val["val_2afc"]["Triplet"], rel=1e-6)


_BLOCKER = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("modeling_afine", "training", "dataset_scripts", "pipelines"):
            raise ImportError(f"{name} is blocked: this process must work without the afine-hf package")
        return None
sys.meta_path.insert(0, _Block())
"""


def test_stage_export_loads_without_the_package(tmp_path, stage1_dir):
    """The stage output is a Hub-ready folder: code + auto_map + card; AutoModel loads it with the package blocked."""
    from modeling_afine import AfineImageProcessor, AfineModel

    cfg = json.loads((stage1_dir / "config.json").read_text())
    assert cfg["auto_map"]["AutoModel"] == "modeling_afine.AfineModel"
    assert (stage1_dir / "modeling_afine.py").is_file() and (stage1_dir / "README.md").is_file()
    assert "trust_remote_code=True" in (stage1_dir / "README.md").read_text()
    torch.manual_seed(0)
    x, y = torch.randn(2, 3, 64, 32), torch.randn(1, 3, 64, 32)
    torch.save({"x": x, "y": y}, tmp_path / "inp.pt")
    with torch.no_grad():
        expected = AfineModel.from_pretrained(str(stage1_dir)).eval()(x, y).score_raw
    script = tmp_path / "remote.py"
    script.write_text(_BLOCKER + textwrap.dedent(f"""
        import json, torch
        from transformers import AutoImageProcessor, AutoModel
        try:
            import modeling_afine
        except ImportError:
            pass
        else:
            raise SystemExit("the package was importable")
        m = AutoModel.from_pretrained({str(stage1_dir)!r}, trust_remote_code=True).eval()
        p = AutoImageProcessor.from_pretrained({str(stage1_dir)!r}, trust_remote_code=True)
        assert type(m).__module__.startswith("transformers_modules"), type(m).__module__
        assert type(p).__module__.startswith("transformers_modules"), type(p).__module__
        inp = torch.load({str(tmp_path / 'inp.pt')!r}, weights_only=True)
        with torch.no_grad():
            print(json.dumps(m(inp["x"], inp["y"]).score_raw.tolist()))
        """))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    res = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    got = torch.tensor(json.loads(res.stdout.strip().splitlines()[-1]))
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert AfineImageProcessor.from_pretrained(str(stage1_dir)).size_multiple == 32


def test_stage3_refuses_to_start_without_a_naturalness_fit(tmp_path, init_dir, triplet_txt, capsys):
    txt, images = triplet_txt
    rc = run_train(["--stage", "3", "--init", str(init_dir)] + _common(txt, images, tmp_path / "s3"))
    assert rc == 2
    err = capsys.readouterr().err
    assert "afine train fit-calibration naturalness" in err and str(init_dir) in err and "released" in err
    assert not (tmp_path / "s3" / "model.safetensors").exists()


@pytest.fixture(scope="module")
def tiny_datasets(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("data")
    make_diffiqa(root / "diffiqa", size=(32, 32))
    truth = {name: make_classic(root / name, name, size=(32, 32)) for name in ("kadid10k", "pipal", "tid2013")}
    return {"root": root, "truth": truth}


def test_three_stage_flow_fits_the_naturalness_calibration_after_stage1(tmp_path, tiny_config_file, tiny_datasets,
                                                                        hf_cache):
    """Stage 1 -> 2 -> 3 on the four datasets with tensorboard and accumulation; stage 1 fits the naturalness
    calibration on PIPAL train at its end (checked against an independent fit) and stage 3 starts from it."""
    from modeling_afine import AfineImageProcessor, AfineModel
    from training.calibration import fit_logistic_calibration, logistic_calibration

    root = tiny_datasets["root"]
    data = {n: ["--data", f"{n}={root / n}"] for n in ("diffiqa", "kadid10k", "pipal", "tid2013")}
    common = ["--max_steps", "2", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2",
              "--eval_steps", "2", "--report_to", "tensorboard", "--dataloader_num_workers", "0", "--disable_tqdm",
              "true", "--use_cpu", "--cache_dir", str(hf_cache)]
    s1, s2, s3 = (tmp_path / f"stage{i}" for i in (1, 2, 3))
    assert run_train(["--stage", "1", "--init", str(tiny_config_file), "--output_dir", str(s1)]
                     + data["diffiqa"] + data["kadid10k"] + data["pipal"] + data["tid2013"] + common) == 0
    m1 = AfineModel.from_pretrained(str(s1))
    fit = json.loads((s1 / "natural_calibration_fit.json").read_text())
    assert m1.config.natural_calibration_fit["natural_center"] == fit["natural_center"]
    assert float(m1.natural_calibration.yita3.detach()) == pytest.approx(fit["natural_center"], rel=1e-6)
    assert float(m1.natural_calibration.yita4.detach()) == pytest.approx(fit["natural_scale"], rel=1e-6)
    # independent: raw naturalness of every PIPAL train image vs. the min-max normalised MOS (lower = better)
    proc = AfineImageProcessor.from_pretrained(str(s1))
    rows = [r for group in tiny_datasets["truth"]["pipal"]["Train"].values() for r in group]
    with torch.no_grad():
        u = [float(m1.eval().naturalness(proc.preprocess_images(str(root / "pipal" / "images" / d))).naturalness_raw[0])
             for d, _, _, _ in rows]
    mos = [m for _, _, m, _ in rows]
    lo, hi = min(mos), max(mos)
    y = [-((m - lo) / (hi - lo) * 4 - 2) for m in mos]
    ref = fit_logistic_calibration(u, y)
    assert fit["n"] == len(rows) and fit["dataset"] == "pipal" and fit["split"] == "train"
    # a random tiny model makes the least-squares problem flat, so compare the fitted curves, not the parameters
    assert fit["rmse"] == pytest.approx(ref.rmse, rel=1e-3)
    mine = logistic_calibration(u, fit["natural_center"], fit["natural_scale"])
    assert max(abs(a - b) for a, b in zip(mine, logistic_calibration(u, ref.center, ref.scale))) < 0.05

    assert run_train(["--stage", "2", "--init", str(s1), "--output_dir", str(s2)]
                     + data["kadid10k"] + data["pipal"] + data["tid2013"] + common) == 0
    assert run_train(["--stage", "3", "--init", str(s2), "--output_dir", str(s3)]
                     + data["diffiqa"] + data["kadid10k"] + data["pipal"] + data["tid2013"] + common) == 0
    m3 = AfineModel.from_pretrained(str(s3))
    assert m3.config.natural_center_init == pytest.approx(fit["natural_center"])
    # two AdamW steps at lr <= 1e-3 from the fitted start (plus decoupled weight decay 1e-3 of the value itself)
    center = fit["natural_center"]
    assert float(m3.natural_calibration.yita3.detach()) == pytest.approx(center, abs=3e-3 + 2e-6 * abs(center))
    for run in (s1, s2, s3):
        info = json.loads((run / "training_info.json").read_text())
        assert info["steps"] == 2 and info["gradient_accumulation_steps"] == 2
        assert list((run / "runs").rglob("events.out.tfevents.*"))
        assert set(info["validation_2afc"]) >= {"kadid10k/triplets/validation", "pipal/triplets/validation"}
        assert all(math.isfinite(r.get("loss", 0.0)) for r in _log(run))


def test_dataset_without_validation_split_is_an_error(tmp_path, tiny_config_file, hf_cache, capsys):
    root = tmp_path / "KADID10K"
    make_classic(root, "kadid10k", refs_per_split=(("Train", 2),), size=(32, 32))
    cfg = tmp_path / "s2.json"
    cfg.write_text(json.dumps({"stage": 2, "data": [{"dataset": "kadid10k", "data_dir": None}],
                               "validation": {"every": 1, "data": [{"dataset": "kadid10k", "split": "validation"}]}}))
    init = tmp_path / "init"
    tiny_model().save_pretrained(str(init))
    rc = run_train(["--config", str(cfg), "--init", str(init), "--output_dir", str(tmp_path / "run"), "--data",
                    f"kadid10k={root}", "--cache_dir", str(hf_cache), "--max_steps", "1", "--use_cpu",
                    "--dataloader_num_workers", "0", "--disable_tqdm", "true"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "kadid10k" in err and "'validation'" in err and str(root) in err


def test_shipped_triplet_files_are_preferred(tmp_path, hf_cache, capsys):
    from training.data import resolve_triplet_config, triplets_from_dataset

    root = tmp_path / "PIPAL"
    truth = make_classic(root, "pipal", size=(32, 32))
    group = next(iter(truth["Train"].values()))
    (d1, ref, _, _), (d2, _, _, _) = group[0], group[1]
    shipped = root / "Train" / "Triplet" / "Triplet.txt"
    shipped.parent.mkdir(parents=True)
    shipped.write_text(f"{d1},{d2},{ref},1,0,0\n{d2},{ref},{ref},0,0,0.5\n")
    assert resolve_triplet_config("pipal", root, "auto", "train") == ("triplets_shipped", None)
    config, notice = resolve_triplet_config("pipal", root, "auto", "validation")
    assert config == "triplets" and "no shipped" in notice and "pipal validation" in notice
    assert resolve_triplet_config("pipal", root, "triplets", "train") == ("triplets", None)
    assert resolve_triplet_config("diffiqa", root, "auto", "train") == ("triplets", None)
    got = triplets_from_dataset("pipal", root, config="auto", split="train", cache_dir=str(hf_cache))
    assert [(Path(t.img1).name, Path(t.img2).name, Path(t.ref).name, t.g12, t.g2ref) for t in got] == [
        (d1, d2, ref, 1.0, 0.0), (d2, ref, ref, 0.0, 0.5)]
    regenerated = triplets_from_dataset("pipal", root, config="auto", split="validation", cache_dir=str(hf_cache))
    assert regenerated and "no shipped" in capsys.readouterr().out


def test_load_best_model_at_end_exports_the_best_checkpoint(tmp_path, init_dir, triplet_txt):
    from modeling_afine import AfineModel

    txt, images = triplet_txt
    out = tmp_path / "run"
    cfg = tmp_path / "s1.json"
    cfg.write_text(json.dumps(BIG_LR))
    assert run_train(["--config", str(cfg), "--init", str(init_dir), "--val_triplets", f"{txt}:{images}",
                      "--eval_steps", "1", "--save_steps", "1", "--load_best_model_at_end", "--metric_for_best_model",
                      "2afc"] + _common(txt, images, out, steps="3", batch="2")) == 0
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    accs = {r["step"]: r["val_2afc"]["Triplet"] for r in _log(out) if "val_2afc" in r}
    best_step = max(accs, key=lambda s: (accs[s], -s))  # the first step with the best accuracy
    assert state["best_global_step"] == best_step and best_step != 3  # (else the test could not tell)
    best = AfineModel.from_pretrained(str(out / f"checkpoint-{best_step}")).state_dict()
    final = AfineModel.from_pretrained(str(out)).state_dict()
    assert all(torch.equal(best[k], final[k]) for k in best)
