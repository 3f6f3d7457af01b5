"""`afine convert afine.pth` writes ./afine, a complete Hub model repository: weights, code and a model card."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from huggingface_hub import ModelCard, metadata_load

from .conftest import subprocess_env


@pytest.fixture(scope="module")
def converted_default(tmp_path_factory):
    """`afine convert afine.pth` run in a fresh folder, with no output argument."""
    from tests.modeling.reference_afine import random_official_checkpoint

    work = tmp_path_factory.mktemp("convert_default")
    torch.save(random_official_checkpoint(seed=0), work / "afine.pth")
    proc = subprocess.run([sys.executable, "-m", "modeling_afine", "convert", "afine.pth"], cwd=str(work),
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work


def test_default_output_folder_is_afine(converted_default):
    out = converted_default / "afine"
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md", "modeling_afine.py",
            "pipeline_afine.py"} <= {p.name for p in out.iterdir()}


def test_model_card_metadata(converted_default):
    path = converted_default / "afine" / "README.md"
    meta = metadata_load(path)
    card = ModelCard.load(path)
    assert card.data.to_dict() == meta
    assert meta["library_name"] == "transformers"
    assert meta["license"] == "apache-2.0"
    assert meta["base_model"] == "openai/clip-vit-base-patch32"
    assert "image-quality-assessment" in meta["tags"]
    assert "lower-is-better" in card.text and "trust_remote_code=True" in card.text
    # the transformers pipeline, with the package and (code in the repository) without it
    assert 'pipeline("image-quality-assessment", model="ORG/afine")' in card.text
    assert 'pipeline("image-quality-assessment", model="ORG/afine", trust_remote_code=True)' in card.text
    assert 'pipe("distorted.png", reference="reference.png")' in card.text


def test_model_card_without_code(tmp_path):
    from modeling_afine.convert_afine_checkpoint import convert_afine_checkpoint
    from tests.modeling.reference_afine import random_official_checkpoint

    torch.save(random_official_checkpoint(seed=0), tmp_path / "afine.pth")
    out = convert_afine_checkpoint(tmp_path / "afine.pth", tmp_path / "m", with_code=False)
    meta = metadata_load(out / "README.md")
    assert "custom_code" not in meta["tags"] and "trust_remote_code" not in (out / "README.md").read_text()
    assert 'pipeline("image-quality-assessment", model="ORG/afine")' in (out / "README.md").read_text()
    config = json.loads((out / "config.json").read_text())  # no code in the folder, and none named
    assert "auto_map" not in config and "custom_pipelines" not in config
    assert not list(out.glob("*.py"))
    assert convert_afine_checkpoint(tmp_path / "afine.pth", tmp_path / "n", model_card=False)
    assert not (tmp_path / "n" / "README.md").exists()


LOAD = """
import sys
{block}
from transformers import AutoModel, pipeline
model = AutoModel.from_pretrained("afine"{extra})
print("CLASS", type(model).__module__)
pipe = pipeline("image-quality-assessment", model="afine"{extra})
print("PIPELINE", type(pipe).__module__, type(pipe.model).__module__)
"""


@pytest.mark.parametrize("mode", ["package", "remote_code"])
def test_automodel_from_pretrained_afine_literally(converted_default, mode, tmp_path):
    if mode == "package":
        block, extra = "import modeling_afine", ""
    else:  # the package cannot be imported: the code in the folder is used
        block, extra = "sys.modules['modeling_afine'] = None", ", trust_remote_code=True"
    proc = subprocess.run([sys.executable, "-c", LOAD.format(block=block, extra=extra)], cwd=str(converted_default),
                          env=subprocess_env(HF_MODULES_CACHE=str(tmp_path / "modules")), capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)  # a trust prompt fails at once
    assert proc.returncode == 0, proc.stderr[-3000:]
    module = [ln.split(" ", 1)[1] for ln in proc.stdout.splitlines() if ln.startswith("CLASS")][0]
    pipe, pipe_model = [ln.split()[1:] for ln in proc.stdout.splitlines() if ln.startswith("PIPELINE")][0]
    if mode == "package":
        assert module == pipe_model == "modeling_afine.modeling_afine"
        assert pipe == "modeling_afine.pipeline_afine"
    else:
        assert module.startswith("transformers_modules.") and module.endswith("modeling_afine")
        assert pipe.startswith("transformers_modules.") and pipe.endswith(".pipeline_afine")
        assert pipe_model.startswith("transformers_modules.") and pipe_model.endswith(".modeling_afine")
