"""Import hygiene of the pipelines package (ARCHITECTURE: no modeling_afine at import time, lazy CLI)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(code: str) -> None:
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_cli_and_package_import_nothing_heavy():
    _run("import sys, pipelines, pipelines.cli; "
         "bad = [m for m in ('diffusers', 'transformers', 'torch', 'modeling_afine') if m in sys.modules]; "
         "assert not bad, bad")


def test_modules_do_not_import_modeling_afine():
    _run("import sys, pipelines.unet_paca, pipelines.pipeline_enhancer, pipelines.degradations, "
         "pipelines.diffiqa_generator, pipelines.references, pipelines.noising, pipelines.tiling, pipelines.wavelet, "
         "pipelines.model_source, pipelines.durable; "
         "import pipelines; [getattr(pipelines, n) for n in pipelines.__all__]; "
         "assert 'modeling_afine' not in sys.modules")
