"""Tiny converted A-FINE model, scorer and PNG images for the spaces tests (built once, nothing downloaded)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from modeling_afine.convert_afine_checkpoint import convert_afine_checkpoint
    from tests.modeling.reference_afine import random_official_checkpoint

    pth = tmp_path_factory.mktemp("spaces_official") / "afine.pth"
    torch.save(random_official_checkpoint(seed=0), pth)
    return convert_afine_checkpoint(pth, tmp_path_factory.mktemp("spaces_converted") / "afine-tiny")


@pytest.fixture(scope="session")
def scorer(tiny_model_dir):
    from modeling_afine.scoring import AfineScorer

    return AfineScorer(str(tiny_model_dir), device="cpu", batch_size=2)


def textured(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth colour pattern plus seeded noise, (h, w, 3) uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    base = np.stack([128 + 100 * np.sin(xx / (5 + c) + yy / (7 + 2 * c) + seed) for c in range(3)], axis=-1)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def noisy(img: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(img.astype(np.float64) + rng.normal(0, sigma, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def pngs(tmp_path_factory):
    """Paths: ref (64x64), two distortions of it, a second pair, and an odd-size image (48x80)."""
    d = tmp_path_factory.mktemp("spaces_pngs")
    ref = textured(64, 64, 1)
    ref2 = textured(64, 96, 2)
    arrays = {
        "ref": ref,
        "mild": noisy(ref, 8, 10),
        "strong": noisy(ref, 60, 11),
        "ref2": ref2,
        "dis2": noisy(ref2, 25, 12),
        "odd": textured(48, 80, 3),
    }
    paths = {}
    for name, arr in arrays.items():
        paths[name] = str(d / f"{name}.png")
        Image.fromarray(arr).save(paths[name])
    return paths


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ROOT = Path(__file__).resolve().parents[2]
SPACES = ROOT / "spaces"


def blur(img: np.ndarray, radius: float = 2.0) -> np.ndarray:
    from PIL import ImageFilter

    return np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(radius)))


@pytest.fixture(scope="session")
def gallery_pngs(tmp_path_factory):
    """A reference (64x64) and three candidates: a blurred, a noisier and a clean (identical) copy."""
    d = tmp_path_factory.mktemp("gallery")
    ref = textured(64, 64, 5)
    arrays = {"reference": ref, "blurred": blur(ref, 2.0), "noisier": noisy(ref, 40, 21), "clean": ref.copy()}
    paths = {}
    for name, arr in arrays.items():
        paths[name] = str(d / f"{name}.png")
        Image.fromarray(arr).save(paths[name])
    return paths


def subprocess_env(**extra: str) -> dict:
    """The test environment for a child process, with this worktree first on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
                "OMP_NUM_THREADS": "1"})
    env.update(extra)
    return env


class ServedApp:
    """``python app.py`` of a Space folder, started in a child process on 127.0.0.1."""

    def __init__(self, app_dir: Path, env: dict, timeout: float = 120.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        env = dict(env, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(self.port))
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "app.py"], cwd=str(app_dir), env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{app_dir}/app.py exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.url + "gradio_api/info", timeout=2) as r:
                    self.info = r.read().decode()
                return
            except OSError:
                time.sleep(0.3)
        self.close()
        raise AssertionError(f"{app_dir}/app.py did not answer within {timeout} s:\n{self.output()}")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-4000:]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
