"""Nothing we install shadows Hugging Face's ``spaces`` package; ZeroGPU's ``@spaces.GPU`` is used when present."""

from __future__ import annotations

import configparser
import subprocess
import sys
import sysconfig
import types

import pytest

from .conftest import ROOT, subprocess_env


def test_distribution_does_not_install_a_spaces_package():
    from setuptools import find_packages

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    include = [p.strip() for p in cfg["options.packages.find"]["include"].split("\n") if p.strip()]
    packages = find_packages(str(ROOT), include=include)
    assert "afine_apps" in packages and "modeling_afine" in packages
    assert not [p for p in packages if p == "spaces" or p.startswith("spaces.")]
    assert "spaces>=0.51" in cfg["options.extras_require"]["test"]


@pytest.mark.slow
def test_import_spaces_is_hugging_faces_beside_our_package(tmp_path, tiny_model_dir):
    """A fresh interpreter whose sys.path starts with this worktree (PYTHONPATH, as an install would put our
    packages on sys.path) and runs from an unrelated folder: `import spaces` is the site-packages one, with
    ZeroGPU's GPU decorator; our apps import and build beside it and use that decorator."""
    pytest.importorskip("spaces")
    code = f"""
import sys
import spaces
import afine_apps.zerogpu as z
from afine_apps.demo import build_demo
from modeling_afine import AfineScorer
assert z.hf_spaces() is spaces, z.hf_spaces()
assert {str(ROOT)!r} in sys.path  # the repository root (holding the spaces/ folder) is importable too
demo = build_demo(AfineScorer({str(tiny_model_dir)!r}, device="cpu"))
print("SPACES", spaces.__file__)
print("GPU", spaces.GPU.__module__)
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(ln.split(" ", 1) for ln in proc.stdout.splitlines() if ln.startswith(("SPACES", "GPU")))
    purelib = sysconfig.get_paths()["purelib"]
    assert lines["SPACES"].startswith(purelib), lines
    assert lines["GPU"].startswith("spaces.zero"), lines


def test_gpu_decorator_uses_spaces_gpu_when_importable(monkeypatch):
    from afine_apps import zerogpu

    seen = []

    def fake_gpu(fn, duration=None):
        seen.append((fn, duration))
        return lambda *a: ("on-gpu", fn(*a))

    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=fake_gpu))
    wrapped = zerogpu.gpu(lambda x: x + 1)
    assert wrapped(1) == ("on-gpu", 2) and seen[0][1] == 60
    # not importable (or a module of that name without GPU): the function itself
    monkeypatch.setitem(sys.modules, "spaces", None)
    f = lambda x: x  # noqa: E731
    assert zerogpu.gpu(f) is f
    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace())
    assert zerogpu.gpu(f) is f


def test_zerogpu_device_default(monkeypatch, tiny_model_dir):
    from afine_apps import launching

    captured = {}

    class FakeScorer:
        def __init__(self, model, device=None, dtype=None, batch_size=8):
            captured.update(model=model, device=device)

    import modeling_afine.scoring as scoring

    monkeypatch.setattr(scoring, "AfineScorer", FakeScorer)
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    monkeypatch.delenv("AFINE_DEVICE", raising=False)
    monkeypatch.setenv("AFINE_MODEL", str(tiny_model_dir))
    launching.scorer_from_env()
    assert captured == {"model": str(tiny_model_dir), "device": "cuda"}
    monkeypatch.delenv("SPACES_ZERO_GPU")
    launching.scorer_from_env()
    assert captured["device"] is None
