"""``main()`` of each app: options are parsed, the model loaded, and the app launched as asked."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from .conftest import free_port, textured

ROOT = Path(__file__).resolve().parents[2]


def _capture_launch(monkeypatch, module):
    calls = []

    def fake_launch(demo, args, **kwargs):
        calls.append((demo, args, kwargs))

    monkeypatch.setattr(module, "launch", fake_launch)
    return calls


def test_demo_and_compare_main_load_the_given_model(monkeypatch, tiny_model_dir):
    import gradio as gr

    import spaces.app_compare as app_compare
    import spaces.app_demo as app_demo

    for module, port in ((app_demo, 7860), (app_compare, 7861)):
        monkeypatch.delenv("GRADIO_SERVER_PORT", raising=False)
        calls = _capture_launch(monkeypatch, module)
        module.main(["--model", str(tiny_model_dir), "--device", "cpu"])
        (demo, args, _), = calls
        assert isinstance(demo, gr.Blocks)
        assert (args.model, args.port, args.share, args.host) == (str(tiny_model_dir), port, False, "127.0.0.1")


def test_annotate_main(monkeypatch, tmp_path):
    import spaces.app_annotate as app_annotate

    (tmp_path / "images" / "Original").mkdir(parents=True)
    (tmp_path / "images" / "01").mkdir()
    Image.fromarray(textured(16, 16, 0)).save(tmp_path / "images" / "Original" / "r1.png")
    Image.fromarray(textured(16, 16, 1)).save(tmp_path / "images" / "01" / "r1_01.png")
    calls = _capture_launch(monkeypatch, app_annotate)
    app_annotate.main(["--data-dir", str(tmp_path), "--seed", "4", "--port", "7999", "--share"])
    (_, args, _), = calls
    assert (args.port, args.share, args.seed) == (7999, True, 4)
    with pytest.raises(FileNotFoundError):
        app_annotate.main(["--data-dir", str(tmp_path / "nothing")])


def test_python_dash_m_demo_serves(tiny_model_dir):
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "spaces.app_demo", "--model", str(tiny_model_dir), "--device", "cpu",
                             "--port", str(port)], cwd=str(ROOT), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        body = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/gradio_api/info", timeout=2) as r:
                    body = r.read().decode()
                break
            except OSError:
                time.sleep(0.3)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert body is not None and '"/score"' in body and '"/naturalness"' in body
    finally:
        proc.terminate()
        proc.wait(timeout=20)
