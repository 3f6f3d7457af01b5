"""The ``afine train`` command: dispatch, usage errors and exit codes."""

from __future__ import annotations

import json

from training.cli import main

from .conftest import reset_accelerate


def test_help_and_unknown(capsys):
    assert main([]) == 2
    assert main(["--help"]) == 0
    assert "fit-calibration" in capsys.readouterr().out
    assert main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err
    assert main(["evaluate"]) == 2  # missing required options
    assert main(["stage", "--help"]) == 0


def test_stage_dispatch_runs_training(tmp_path, tiny_config_file, triplet_txt):
    txt, images = triplet_txt
    out = tmp_path / "run"
    try:
        rc = main(["--stage", "1", "--init", str(tiny_config_file), "--output-dir", str(out), "--triplets",
                   f"{txt}:{images}", "--max-steps", "1", "--per_device_train_batch_size", "2", "--dataloader_num_workers", "0", "--disable_tqdm", "true",
                   "--use_cpu"])
    finally:
        reset_accelerate()
    assert rc == 0
    assert json.loads((out / "training_info.json").read_text())["stage"] == 1


def test_top_level_afine_command_dispatches(tmp_path, capsys):
    from modeling_afine.cli import main as afine_main

    rc = afine_main(["train", "evaluate", "--model", "x", "--dataset", "sriqa_bench", "--data-dir",
                     str(tmp_path / "absent"), "--no-progress"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "absent" in err and "Traceback" not in err
    assert afine_main(["train", "nope"]) == 2
