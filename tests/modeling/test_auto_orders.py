"""After ``import modeling_afine`` every Auto class and ``transformers.pipeline`` resolve to the package's classes,
with no trust_remote_code prompt, whatever the order of imports and uses (issue 17, item 1).

The folder used is a converted one, so it carries remote code (``auto_map``, ``custom_pipelines``): a class that
is not registered in time makes transformers ask for trust_remote_code, which with stdin closed fails at once.

Every scenario runs in a process that has never imported transformers or modeling_afine. To afford many of them,
one subprocess (stdin closed) imports only third-party libraries that are no part of the mechanism (torch, numpy,
PIL, ...; never transformers) and forks one child per scenario, two at a time, each killed after a timeout. The
issue's own script also runs in a plain fresh interpreter.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
NAMES = ("AutoConfig", "AutoModel", "AutoImageProcessor", "AutoProcessor", "pipeline")
FIELDS = ["score", "score_raw", "fidelity", "naturalness_distorted", "naturalness_reference"]

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the scenario runner forks")

# Common head of every scenario: what a use of each name must give.
_CHECKS = textwrap.dedent(
    """
    import sys
    FOLDER, IMAGE = {folder!r}, {image!r}

    def local(obj):
        module = type(obj).__module__
        assert module.startswith("modeling_afine."), f"{{type(obj).__name__}} comes from {{module}}"
        return obj

    def use(name, cls):
        if name == "pipeline":
            pipe = local(cls("image-quality-assessment", model=FOLDER))
            local(pipe.model), local(pipe.image_processor)
            out = pipe(IMAGE, reference=IMAGE)
            assert sorted(out) == sorted({fields!r}), out
            assert all(isinstance(v, float) for v in out.values()), out
        else:
            local(cls.from_pretrained(FOLDER))
    """
)
_TAIL = 'assert not [m for m in sys.modules if m.startswith("transformers_modules")], "remote code was loaded"\n'

# Imports the libraries transformers needs (not transformers), then runs each scenario in a forked child.
_RUNNER = textwrap.dedent(
    """
    import importlib, json, os, signal, sys, time, traceback
    scenarios = json.load(open(sys.argv[1]))
    limit, parallel = float(sys.argv[2]), 2
    for name in ("torch", "torch._dynamo", "torch.distributed.tensor", "torch.fx.experimental.symbolic_shapes",
                 "sympy", "numpy", "PIL.Image", "safetensors.torch", "huggingface_hub", "tokenizers", "regex",
                 "yaml", "jinja2", "psutil"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    assert not [m for m in sys.modules if m.startswith(("transformers", "modeling_afine"))]
    results, running, queue = {}, {}, list(scenarios.items())
    while queue or running:
        while queue and len(running) < parallel:
            key, code = queue.pop(0)
            log = sys.argv[1] + "." + str(len(results) + len(running)) + ".log"
            pid = os.fork()
            if pid == 0:
                fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                os.dup2(fd, 1), os.dup2(fd, 2)
                try:
                    exec(compile(code, key, "exec"), {"__name__": "__main__"})
                except BaseException:
                    traceback.print_exc()
                    sys.stderr.flush()
                    os._exit(1)
                sys.stdout.flush(), sys.stderr.flush()
                os._exit(0)
            running[pid] = (key, log, time.monotonic())
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            for pid, (key, log, start) in list(running.items()):
                if time.monotonic() - start > limit:
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)
            continue
        key, log, start = running.pop(pid)
        text = open(log, errors="replace").read()
        lines = [ln for ln in text.splitlines() if ln.strip() and "Loading weights" not in ln]
        code = os.waitstatus_to_exitcode(status)
        results[key] = {"ok": code == 0, "error": "" if code == 0 else
                        ("killed after %.0f s" % limit if code == -9 else (lines[-1] if lines else "exit %d" % code)),
                        "seconds": round(time.monotonic() - start, 2)}
    print(json.dumps(results))
    """
)


@pytest.fixture(scope="module")
def afine_folder(converted_dir, tmp_path_factory):
    """The converted tiny model (with its remote code) and a 40x56 PNG."""
    cfg = json.loads((converted_dir / "config.json").read_text())
    assert "AutoModel" in cfg["auto_map"] and "image-quality-assessment" in cfg["custom_pipelines"]
    image = tmp_path_factory.mktemp("auto_orders") / "image.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(image)
    return str(converted_dir), str(image)


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return env


def _script(afine_folder, body: str) -> str:
    folder, image = afine_folder
    return _CHECKS.format(folder=folder, image=image, fields=FIELDS) + textwrap.dedent(body) + _TAIL


def _run(afine_folder, tmp_path, scenarios: dict[str, str], limit: float = 180.0) -> None:
    spec = tmp_path / "scenarios.json"
    spec.write_text(json.dumps({key: _script(afine_folder, body) for key, body in scenarios.items()}))
    proc = subprocess.run([sys.executable, "-c", _RUNNER, str(spec), str(limit)], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=60 + 4 * limit)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(results) == set(scenarios)
    failed = {key: r["error"] for key, r in results.items() if not r["ok"]}
    assert not failed, f"{len(failed)} of {len(results)} orders failed:\n" + "\n".join(
        f"--- {key}\n    {err}" for key, err in failed.items())


def _statements(order, *, package_at: int = 0, interleave: bool = True) -> str:
    """``from transformers import X`` per name in ``order``, each used right after its import (``interleave``) or
    all used after the last import, in the same order; ``import modeling_afine`` after ``package_at`` names."""
    assert not (interleave and package_at), "a name used before the package is imported may rightly prompt"
    imports = [f"from transformers import {name}" for name in order]
    uses = [f"use({name!r}, {name})" for name in order]
    lines = [ln for pair in zip(imports, uses) for ln in pair] if interleave else imports + uses
    lines.insert(2 * package_at if interleave else package_at, "import modeling_afine")
    return "\n".join(lines) + "\n"


def _lazy(order, *, first: str = "import modeling_afine\nimport transformers") -> str:
    """Attribute access on the lazy ``transformers`` module: each name is imported where it is first used."""
    return first + "\n" + "".join(f"use({name!r}, transformers.{name})\n" for name in order)


def test_issue_script_in_a_fresh_interpreter(afine_folder, tmp_path):
    """The issue's script, literally, in a plain new interpreter with stdin closed."""
    folder, _ = afine_folder
    code = textwrap.dedent(
        f"""
        import modeling_afine
        from transformers import AutoModel, AutoImageProcessor
        model = AutoModel.from_pretrained({folder!r})
        processor = AutoImageProcessor.from_pretrained({folder!r})
        print(type(model).__module__, type(processor).__module__)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          env=_env(), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["modeling_afine.modeling_afine", "modeling_afine.image_processing_afine"]


def test_representative_orders(afine_folder, tmp_path):
    """Each way the registries can come in: one name first (every name), names in one statement, the package
    imported before, between and after transformers, the package's own model module first, lazy access."""
    scenarios = {
        "AutoModel, AutoImageProcessor (one statement)":
            "import modeling_afine\nfrom transformers import AutoModel, AutoImageProcessor\n"
            "use('AutoImageProcessor', AutoImageProcessor)\nuse('AutoModel', AutoModel)\n",
        "AutoImageProcessor, AutoModel (one statement)":
            "import modeling_afine\nfrom transformers import AutoImageProcessor, AutoModel\n"
            "use('AutoModel', AutoModel)\nuse('AutoImageProcessor', AutoImageProcessor)\n",
        "all five in one statement, then the package":
            "from transformers import pipeline, AutoProcessor, AutoImageProcessor, AutoModel, AutoConfig\n"
            "import modeling_afine\n" + "".join(f"use({n!r}, {n})\n" for n in NAMES),
        "package between AutoModel and the others, all imports first": _statements(
            ("AutoModel", "AutoImageProcessor", "pipeline", "AutoConfig", "AutoProcessor"), package_at=1,
            interleave=False),
        "import transformers, then the package, then lazy access": _lazy(
            ("AutoImageProcessor", "AutoModel", "pipeline", "AutoProcessor", "AutoConfig"),
            first="import transformers\nimport modeling_afine"),
        "the package's model module first": _lazy(
            ("AutoConfig", "AutoProcessor", "AutoModel", "pipeline", "AutoImageProcessor"),
            first="from modeling_afine import AfineModel\nimport transformers"),
    }
    for name in NAMES:  # each name first, the others after it in a rotating order, lazily
        rest = [n for n in NAMES if n != name]
        k = NAMES.index(name)
        scenarios[f"lazy, {name} first"] = _lazy([name] + rest[k % 4:] + rest[: k % 4])
    _run(afine_folder, tmp_path, scenarios)


@pytest.mark.slow
def test_every_order_of_the_auto_classes(afine_folder, tmp_path):
    """All 24 orders of AutoConfig, AutoModel, AutoImageProcessor and AutoProcessor, each imported with its own
    ``from transformers import X`` after ``import modeling_afine`` and used at once, with the pipeline imported
    and used at each of the five positions in turn (so every pair of names meets in both orders)."""
    scenarios = {}
    for i, order in enumerate(itertools.permutations(NAMES[:4])):
        order = list(order)
        order.insert(i % 5, "pipeline")
        scenarios[", ".join(order)] = _statements(order)
    _run(afine_folder, tmp_path, scenarios)
