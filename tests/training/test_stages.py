"""The three training stages end to end on CPU: what each stage changes, hand-off, resume, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from .conftest import run_train, tiny_model

TRAINED = {
    1: lambda n: (n.startswith("vision_model.") and not n.startswith("vision_model.post_layernorm."))
    or n.startswith("natural_head."),
    2: lambda n: n.startswith("fidelity_head."),
    3: lambda n: n.startswith(("natural_calibration.", "fidelity_calibration.", "adapter.")),
}


def _state(model_dir) -> dict:
    from modeling_afine import AfineModel

    return {k: v.clone() for k, v in AfineModel.from_pretrained(str(model_dir)).state_dict().items()}


def _config(tmp_path: Path, stage: int, **extra) -> Path:
    """A stage config with big learning rates so that one step visibly moves every trained tensor."""
    lrs = {1: {"vision_model": 1e-3, "natural_head": 1e-3}, 2: {"fidelity_head": 1e-2},
           3: {"natural_calibration": 1e-2, "fidelity_calibration": 1e-2, "adapter": 1e-2}}[stage]
    path = tmp_path / f"stage{stage}.json"
    path.write_text(json.dumps({"stage": stage, "lr": lrs, **extra}))
    return path


def _common(txt, images, out, steps="1", batch="4"):
    return ["--output-dir", str(out), "--triplets", f"{txt}:{images}", "--max-steps", steps, "--per_device_train_batch_size", batch,
            "--dataloader_num_workers", "0", "--disable_tqdm", "true", "--use_cpu"]


@pytest.fixture(scope="module")
def init_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("init") / "tiny"
    tiny_model(seed=3).save_pretrained(str(path))
    return path


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_one_step_changes_exactly_the_stage_parameters(stage, tmp_path, init_dir, triplet_txt):
    txt, images = triplet_txt
    out = tmp_path / "run"
    released = ["--natural_calibration", "released"] if stage == 3 else []  # the tiny init has no PIPAL fit
    rc = run_train(["--config", str(_config(tmp_path, stage)), "--init", str(init_dir)] + released
                   + _common(txt, images, out))
    assert rc == 0
    before, after = _state(init_dir), _state(out)
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    params = {n for n, _ in tiny_model().named_parameters()}
    # The last bias of the naturalness head shifts every u equally: every loss depends on differences of
    # u only, so its gradient is exactly 0 and only AdamW's decoupled weight decay moves it (a pure shrink),
    # as in the official code.
    bias = "natural_head.proj_head.2.bias"
    expected = {k for k in params if TRAINED[stage](k)} - {bias}
    assert expected, "the stage must train something"
    assert changed - {bias} == expected
    if TRAINED[stage](bias) and before[bias].abs().item() > 0:
        ratio = (after[bias] / before[bias]).item()
        assert 1 - 1e-2 < ratio < 1, ratio  # shrunk towards 0 by weight decay, never pushed by a gradient
    else:
        assert torch.equal(before[bias], after[bias])
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 1 and log[-1]["loss"] == pytest.approx(log[-1]["loss"])
    info = json.loads((out / "training_info.json").read_text())
    assert info["stage"] == stage and info["steps"] == 1


def test_stage_handoff_loads_previous_directory(tmp_path, stage1_dir, triplet_txt):
    txt, images = triplet_txt
    out = tmp_path / "stage2"
    assert run_train(["--stage", "2", "--init", str(stage1_dir)] + _common(txt, images, out)) == 0
    s1, s2 = _state(stage1_dir), _state(out)
    # stage 2 started from the stage-1 model: CLIP and the naturalness head are carried over unchanged
    for k in s1:
        if k.startswith(("vision_model.", "natural_head.")):
            assert torch.equal(s1[k], s2[k]), k
    assert not torch.equal(s1["fidelity_head.alpha"], s2["fidelity_head.alpha"])
    out3 = tmp_path / "stage3"
    assert run_train(["--stage", "3", "--init", str(out), "--natural_calibration", "released"]
                     + _common(txt, images, out3)) == 0
    s3 = _state(out3)
    assert torch.equal(s2["fidelity_head.alpha"], s3["fidelity_head.alpha"])
    assert not torch.equal(s2["adapter.k"], s3["adapter.k"])
    # the exported directory is a working scorer
    from modeling_afine.scoring import AfineScorer

    scorer = AfineScorer(str(out3), device="cpu")
    res = scorer.score([str(images / "00" / "ref0_00.png")], str(images / "Original" / "ref0.png"))
    assert torch.isfinite(res.score_raw).all()


def test_resume_continues_exactly(tmp_path, init_dir, triplet_txt):
    txt, images = triplet_txt
    cfg = _config(tmp_path, 1)
    full = tmp_path / "full"
    assert run_train(["--config", str(cfg), "--init", str(init_dir), "--logging_steps", "1"]
                     + _common(txt, images, full, steps="4", batch="2")) == 0
    part = tmp_path / "part"
    base = ["--config", str(cfg), "--init", str(init_dir), "--logging_steps", "1"] + _common(txt, images, part, steps="4", batch="2")
    assert run_train(base + ["--stop-at-step", "2"]) == 0
    assert not (part / "model.safetensors").exists()
    assert (part / "checkpoint-2" / "trainer_state.json").is_file()
    assert run_train(base + ["--resume_from_checkpoint", "latest"]) == 0
    a, b = _state(full), _state(part)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    log_full = [json.loads(x) for x in (full / "log.jsonl").read_text().splitlines()]
    log_part = [json.loads(x) for x in (part / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log_part] == [1, 2, 3, 4]
    for r1, r2 in zip(log_full, log_part):
        assert r1["lr"] == r2["lr"] and r1["loss"] == r2["loss"]
    # the 4-cycle schedule scaled to 4 steps: one-step cycles; step 1 runs at the base lr, each later step at
    # the end of a cycle (BasicSR counts a cycle's first position as t - R = 1), i.e. at eta_min
    assert [r["lr"]["vision_model"] for r in log_full] == pytest.approx([1e-3, 1e-8, 1e-8, 1e-8], rel=1e-6)


def test_resume_refuses_changed_settings(tmp_path, init_dir, triplet_txt):
    txt, images = triplet_txt
    out = tmp_path / "run"
    base = ["--stage", "1", "--init", str(init_dir)]
    assert run_train(base + _common(txt, images, out, steps="3") + ["--stop-at-step", "1"]) == 0
    assert run_train(base + _common(txt, images, out, steps="5") + ["--resume_from_checkpoint", "latest"]) == 2


def test_usage_errors(tmp_path, init_dir, triplet_txt, capsys):
    txt, images = triplet_txt
    out = tmp_path / "x"
    # stage 2 without --init
    assert run_train(["--stage", "2"] + _common(txt, images, out)) == 2
    assert "--init" in capsys.readouterr().err
    # a configured dataset without its folder
    assert run_train(["--stage", "2", "--init", str(init_dir), "--output-dir", str(out)]) == 2
    assert "--data kadid10k=DIR" in capsys.readouterr().err
    # a dataset name the config does not use
    assert run_train(["--stage", "2", "--init", str(init_dir), "--output-dir", str(out), "--data", "diffiqa=/x"]) == 2
    # missing triplet file -> failure naming the file
    missing = tmp_path / "nope.txt"
    assert run_train(["--stage", "1", "--init", str(init_dir), "--output-dir", str(out), "--triplets", f"{missing}:{images}",
                      "--disable_tqdm", "true", "--use_cpu"]) == 1
    assert str(missing) in capsys.readouterr().err
    # stage 2 from something that is not an A-FINE directory
    cfg_only = tmp_path / "cfg.json"
    cfg_only.write_text("{}")
    assert run_train(["--stage", "2", "--init", str(cfg_only)] + _common(txt, images, out)) == 2


def test_validation_2afc_matches_independent_computation(tmp_path, init_dir, triplet_txt):
    from modeling_afine import AfineImageProcessor, AfineModel
    from training.data import triplets_from_txt

    txt, images = triplet_txt
    out = tmp_path / "run"
    assert run_train(["--stage", "1", "--init", str(init_dir), "--val-triplets", f"{txt}:{images}", "--eval_steps", "1"]
                     + _common(txt, images, out, steps="1")) == 0
    val = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines() if "val_2afc" in x]
    assert len(val) == 1 and val[0]["step"] == 1
    got = val[0]["val_2afc"]["Triplet"]
    model = AfineModel.from_pretrained(str(out)).eval()
    proc = AfineImageProcessor.from_pretrained(str(out))
    ok = 0
    triplets = triplets_from_txt(txt, images)
    with torch.no_grad():
        for t in triplets:
            u1 = float(model.naturalness(proc.preprocess_images(t.img1)).naturalness_raw[0])
            u2 = float(model.naturalness(proc.preprocess_images(t.img2)).naturalness_raw[0])
            ok += (u1 < u2 and t.g12 == 1) or (u1 > u2 and t.g12 == 0) or (u1 == u2 and t.g12 == 0.5)
    assert got == pytest.approx(ok / len(triplets))


def test_stage1_init_from_a_clip_vision_checkpoint(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from training.train_afine import build_initial_model

    from .conftest import TINY_CONFIG

    torch.manual_seed(0)
    clip = CLIPVisionModel(CLIPVisionConfig(**TINY_CONFIG["vision_config"]))
    clip.save_pretrained(str(tmp_path / "clip"))
    model = build_initial_model(str(tmp_path / "clip"), 1)
    own, ref = model.vision_model.state_dict(), clip.state_dict()
    assert own.keys() == ref.keys() and all(torch.equal(own[k], ref[k]) for k in own)
    with pytest.raises(ValueError, match="stage 2"):
        build_initial_model(str(tmp_path / "clip"), 2)


def test_stage3_natural_calibration_from_a_fit(tmp_path, init_dir, triplet_txt):
    txt, images = triplet_txt
    fit = tmp_path / "nr.json"
    fit.write_text(json.dumps({"kind": "naturalness", "natural_center": 1.5, "natural_scale": 3.0}))
    out = tmp_path / "s3"
    assert run_train(["--stage", "3", "--init", str(init_dir), "--natural-calibration", str(fit)]
                     + _common(txt, images, out)) == 0
    from modeling_afine import AfineModel

    m = AfineModel.from_pretrained(str(out))
    # one AdamW step at lr 1e-3 moves a scalar by at most about 1e-3
    assert float(m.natural_calibration.yita3.detach()) == pytest.approx(1.5, abs=2e-3)
    assert float(m.natural_calibration.yita4.detach()) == pytest.approx(3.0, abs=2e-3)
    assert m.config.natural_center_init == 1.5
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"kind": "score", "score_center": 0.0, "score_scale": 1.0}))
    assert run_train(["--stage", "3", "--init", str(init_dir), "--natural-calibration", str(bad)]
                     + _common(txt, images, tmp_path / "s3b")) == 2


def test_config_files_and_overrides(tmp_path):
    from training.train_afine import ConfigError, load_stage_config, parse_args, resolve_config

    for stage, lrs in ((1, {"vision_model": 5e-6, "natural_head": 5e-6}), (2, {"fidelity_head": 5e-4}),
                       (3, {"natural_calibration": 1e-3, "fidelity_calibration": 1e-3, "adapter": 1e-3})):
        cfg = load_stage_config(stage)
        assert cfg["lr"] == lrs and cfg["max_steps"] == 40000
        assert cfg["optimizer"]["betas"] == [0.9, 0.99] and cfg["optimizer"]["weight_decay"] == 1e-3
        assert cfg["scheduler"] == {"periods": [10000] * 4, "restart_weights": [1.0, 0.5, 0.5, 0.5], "eta_min": 1e-8}
        assert cfg["batch_size"] == (32 if stage == 1 else 128)
        assert ("diffiqa" in [d["dataset"] for d in cfg["data"]]) == (stage != 2)
    yml = tmp_path / "s2.yaml"
    yml.write_text("stage: 2\nmax_steps: 7\nbatch_size: 3\n")
    args = parse_args(["--config", str(yml), "--init", "x", "--output-dir", str(tmp_path), "--data", "kadid10k=/k",
                       "--data", "pipal=/p", "--data", "tid2013=/t", "--max-steps", "9"])
    cfg = resolve_config(args)
    assert cfg["max_steps"] == 9 and cfg["batch_size"] == 3 and cfg["lr"] == {"fidelity_head": 5e-4}
    assert [d["data_dir"] for d in cfg["data"]] == ["/k", "/p", "/t"]
    assert [d["data_dir"] for d in cfg["validation"]["data"]] == ["/k", "/p", "/t"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"stage": 1, "learning_rates": 1}))
    with pytest.raises(ConfigError, match="unknown config keys"):
        load_stage_config(bad)
    # TrainingArguments fields are accepted by name in a config file and become the parser defaults
    ok = tmp_path / "ok.json"
    ok.write_text(json.dumps({"stage": 2, "gradient_accumulation_steps": 3, "report_to": "none"}))
    args = parse_args(["--config", str(ok), "--init", "x", "--output_dir", str(tmp_path), "--data", "kadid10k=/k",
                       "--data", "pipal=/p", "--data", "tid2013=/t"])
    assert args.training.gradient_accumulation_steps == 3 and resolve_config(args)["gradient_accumulation_steps"] == 3
    with pytest.raises(ConfigError, match="lr_scheduler_type"):
        parse_args(["--stage", "2", "--output_dir", str(tmp_path), "--lr_scheduler_type", "linear"])
