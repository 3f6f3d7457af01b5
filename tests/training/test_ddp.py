"""Gradient synchronisation under DDP: 2 CPU processes (gloo) that see different data end identical.

The official stage 1 never all-reduced CLIP's gradients (spec §6.12); here the whole stage module is
prepared by accelerate, so every trainable tensor is synchronised. The 2-process run must also equal a
1-process run with the same global batch (gradients are averaged, not just equalised).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .conftest import run_train, tiny_model

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_training_stays_in_sync(tmp_path, triplet_txt):
    from modeling_afine import AfineModel

    txt, images = triplet_txt
    init = tmp_path / "init"
    tiny_model(seed=5).save_pretrained(str(init))
    cfg = tmp_path / "stage1.json"
    cfg.write_text(json.dumps({"stage": 1, "lr": {"vision_model": 1e-3, "natural_head": 1e-3}}))
    args = ["--config", str(cfg), "--init", str(init), "--triplets", f"{txt}:{images}", "--max-steps", "2",
            "--dataloader_num_workers", "0", "--disable_tqdm", "true", "--use_cpu", "--per-sample", "--val-triplets", f"{txt}:{images}",
            "--eval_steps", "2"]
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           "-m", "training.train_afine", "--output-dir", str(tmp_path / "ddp"), "--per_device_train_batch_size", "2"] + args
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    info = json.loads((tmp_path / "ddp" / "training_info.json").read_text())
    assert info["num_processes"] == 2
    losses = info["first_step_loss_per_process"]
    assert losses[0] != losses[1], "the two processes must see different triplets"
    sums = info["parameter_checksums"]
    assert sums[0] == sums[1] and info["processes_in_sync"] is True

    # the same global batch (2 x 2) in one process gives the same parameters
    assert run_train(["--output-dir", str(tmp_path / "single"), "--per_device_train_batch_size", "4"] + args) == 0
    a = AfineModel.from_pretrained(str(tmp_path / "ddp")).state_dict()
    b = AfineModel.from_pretrained(str(tmp_path / "single")).state_dict()
    start = AfineModel.from_pretrained(str(init)).state_dict()
    moved = 0
    for k in a:
        moved += int(not torch.equal(a[k], start[k]))
        if k == "natural_head.proj_head.2.bias":
            # Its true gradient is exactly zero (every loss depends on score differences only), so Adam
            # normalises pure rounding noise into a step: it cannot agree between the two runs.
            continue
        # Adam divides by sqrt(v): float-summation differences of ~1e-7 become ~1e-5 in a 1e-3 step.
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=3e-5, msg=k)
    assert moved > 10
    # validation is sharded over the two processes and gathered: the same accuracy as one process
    vals = [[json.loads(x)["val_2afc"] for x in (tmp_path / d / "log.jsonl").read_text().splitlines() if "val_2afc" in x]
            for d in ("ddp", "single")]
    assert len(vals[0]) == 1 and vals[0] == vals[1]
