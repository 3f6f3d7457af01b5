"""A saved enhancer is self-contained: it loads with diffusers' ``trust_remote_code`` in a process
where this project cannot be imported, and gives the same images as the package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from ..blocked_packages import BLOCK_PROJECT
from .conftest import random_image

# Runs in a fresh interpreter, outside the repository, with the project's packages made unimportable.
_CHILD = BLOCK_PROJECT + textwrap.dedent(
    """
    import json, sys
    folder, image_file, out_file, resaved = sys.argv[1:5]
    import numpy as np
    import torch
    from diffusers import DiffusionPipeline

    image = np.load(image_file)
    pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    pipe.set_progress_bar_config(disable=True)
    out = pipe("clean, high-resolution, 8k", image, generator=torch.Generator().manual_seed(0),
               num_inference_steps=2, output_type="np").images
    # a pipeline loaded from remote code saves a folder that loads the same way again
    pipe.save_pretrained(resaved)
    again = DiffusionPipeline.from_pretrained(resaved, trust_remote_code=True)
    again.set_progress_bar_config(disable=True)
    out2 = again(image=image, generator=torch.Generator().manual_seed(0), num_inference_steps=2,
                 output_type="np").images
    np.save(out_file, np.stack([out, out2]))
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    print(json.dumps({"class": type(pipe).__module__ + "." + type(pipe).__name__,
                      "unet": type(pipe.unet).__module__, "leaked": leaked}))
    """
)


def test_saved_folder_loads_with_trust_remote_code_without_the_package(tiny_pipe, tiny_pipe_dir, tmp_path):
    image = np.asarray(random_image((48, 64), seed=21))
    np.save(tmp_path / "image.npy", image)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    work = tmp_path / "elsewhere"
    work.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tiny_pipe_dir), str(tmp_path / "image.npy"), str(tmp_path / "out.npy"),
         str(tmp_path / "resaved")],
        cwd=work, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["leaked"] == []
    assert info["class"].startswith("diffusers_modules.") and info["class"].endswith(".EnhancerPipeline")
    assert info["unet"].startswith("diffusers_modules.")
    remote = np.load(tmp_path / "out.npy")
    ours = tiny_pipe("clean, high-resolution, 8k", image, generator=torch.Generator().manual_seed(0),
                     num_inference_steps=2, output_type="np").images
    np.testing.assert_array_equal(remote[0], ours)
    np.testing.assert_array_equal(remote[1], ours)
    index = json.loads((tmp_path / "resaved" / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_enhancer", "EnhancerPipeline"]
    assert index["unet"] == ["unet_paca", "PASDUNet2DConditionModel"]


def test_remote_code_needs_consent(tiny_pipe_dir):
    from diffusers import DiffusionPipeline

    with pytest.raises(ValueError, match="trust_remote_code"):
        DiffusionPipeline.from_pretrained(tiny_pipe_dir)


def test_package_loader_reads_old_and_new_folders(tiny_pipe, tiny_pipe_dir, tmp_path):
    """EnhancerPipeline.from_pretrained uses the package's classes (no remote code) for folders written
    by this version and by earlier ones (model_index naming ``pipelines.unet_paca``)."""
    import shutil

    from pipelines.pipeline_enhancer import EnhancerPipeline
    from pipelines.unet_paca import PASDUNet2DConditionModel

    old = tmp_path / "old"
    shutil.copytree(tiny_pipe_dir, old)
    for f in list(old.glob("*.py")) + list(old.glob("unet/*.py")):
        f.unlink()
    index = json.loads((old / "model_index.json").read_text())
    index.update(_class_name="EnhancerPipeline", unet=["pipelines.unet_paca", "PASDUNet2DConditionModel"])
    (old / "model_index.json").write_text(json.dumps(index))
    img = random_image((32, 32), seed=22)
    ref = tiny_pipe(image=img, generator=torch.Generator().manual_seed(0), num_inference_steps=2, output_type="np").images
    for folder in (tiny_pipe_dir, old):
        pipe = EnhancerPipeline.from_pretrained(folder, trust_remote_code=True)
        assert type(pipe.unet) is PASDUNet2DConditionModel
        pipe.set_progress_bar_config(disable=True)
        out = pipe(image=img, generator=torch.Generator().manual_seed(0), num_inference_steps=2, output_type="np").images
        np.testing.assert_array_equal(out, ref)


@pytest.mark.slow
def test_cached_hub_repo_loads_offline_with_trust_remote_code(tiny_pipe, tiny_pipe_dir, tmp_path):
    """The saved folder as a Hub repository (here: a Hugging Face cache entry, offline)."""
    import shutil

    snapshot = tmp_path / "hub" / "models--someorg--tiny-enhancer" / "snapshots" / "0123abcd"
    shutil.copytree(tiny_pipe_dir, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abcd")
    image = np.asarray(random_image((32, 40), seed=23))
    np.save(tmp_path / "image.npy", image)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hub"),
               OMP_NUM_THREADS="1")
    work = tmp_path / "elsewhere"
    work.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, "someorg/tiny-enhancer", str(tmp_path / "image.npy"), str(tmp_path / "out.npy"),
         str(tmp_path / "resaved")],
        cwd=work, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["leaked"] == []
    ours = tiny_pipe("clean, high-resolution, 8k", image, generator=torch.Generator().manual_seed(0),
                     num_inference_steps=2, output_type="np").images
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy")[0], ours)
