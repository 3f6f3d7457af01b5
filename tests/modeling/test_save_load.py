"""Save/load round trips, Auto classes and the trust_remote_code route."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import torch
from transformers import AutoConfig, AutoImageProcessor, AutoModel

import modeling_afine  # noqa: F401  (registers the Auto classes)
from modeling_afine import AfineConfig, AfineImageProcessor, AfineModel


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 64, 96, generator=g), torch.randn(2, 3, 64, 96, generator=g)


def test_converted_dir_layout(converted_dir):
    names = set(os.listdir(converted_dir))
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= names
    assert {"configuration_afine.py", "modeling_afine.py", "image_processing_afine.py", "image_io.py"} <= names
    cfg = json.load(open(converted_dir / "config.json"))
    assert cfg["model_type"] == "afine"
    assert cfg["auto_map"]["AutoModel"] == "modeling_afine.AfineModel"
    assert cfg["vision_config"]["hidden_size"] == 128 and cfg["vision_config"]["num_attention_heads"] == 2
    # constants that the official checkpoint does not store
    assert cfg["fidelity_center_bounds"] == [0.05, 0.95] and cfg["fidelity_scale_bounds"] == [0.01, 0.7]
    assert cfg["score_center"] == -1.971 and cfg["score_scale"] == -2.3734


def test_save_load_round_trip(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    again = AfineModel.from_pretrained(tmp_path / "m").eval()
    for (k, a), (k2, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    x, y = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(x, y).score, again(x, y).score, rtol=0, atol=0)


def test_auto_classes(converted_dir, model):
    cfg = AutoConfig.from_pretrained(converted_dir)
    assert isinstance(cfg, AfineConfig)
    auto = AutoModel.from_pretrained(converted_dir).eval()
    assert type(auto) is AfineModel
    proc = AutoImageProcessor.from_pretrained(converted_dir)
    assert isinstance(proc, AfineImageProcessor)
    x, y = _inputs(1)
    with torch.no_grad():
        torch.testing.assert_close(auto(x, y).score, model(x, y).score, rtol=0, atol=0)


def test_default_config_is_vit_b32():
    cfg = AfineConfig()
    v = cfg.vision_config
    assert (v.hidden_size, v.num_hidden_layers, v.num_attention_heads, v.patch_size, v.image_size) == (768, 12, 12, 32, 224)
    assert v.hidden_act == "quick_gelu" and v.layer_norm_eps == 1e-5
    assert cfg.fidelity_channels == [3] + [768] * 12
    restored = AfineConfig.from_dict(cfg.to_dict())
    assert restored.to_dict() == cfg.to_dict()


def test_stock_clip_weights_initialise_backbone():
    from transformers import CLIPVisionConfig, CLIPVisionModel

    vc = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, image_size=64, patch_size=32)
    clip = CLIPVisionModel(CLIPVisionConfig(**vc))
    model = AfineModel(AfineConfig(vision_config=vc, natural_hidden_dim=8, natural_mlp_dim=16))
    model.load_clip_vision_weights(clip.state_dict())
    for k, v in clip.state_dict().items():
        assert torch.equal(model.vision_model.state_dict()[k], v), k


def test_trust_remote_code_in_fresh_process(converted_dir, tmp_path, model):
    """Load the converted dir with trust_remote_code in a fresh process where the package is blocked."""
    x, y = _inputs(2)
    torch.save({"x": x, "y": y}, tmp_path / "inp.pt")
    with torch.no_grad():
        expected = model(x, y).score
    script = tmp_path / "remote.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import json, sys
            sys.modules["modeling_afine"] = None  # make `import modeling_afine` fail: only the copied code may be used
            import torch
            from transformers import AutoImageProcessor, AutoModel
            m = AutoModel.from_pretrained({str(converted_dir)!r}, trust_remote_code=True).eval()
            p = AutoImageProcessor.from_pretrained({str(converted_dir)!r}, trust_remote_code=True)
            assert type(m).__module__.startswith("transformers_modules"), type(m).__module__
            assert type(p).__module__.startswith("transformers_modules"), type(p).__module__
            inp = torch.load({str(tmp_path / 'inp.pt')!r}, weights_only=True)
            with torch.no_grad():
                print(json.dumps(m(inp["x"], inp["y"]).score.tolist()))
            """
        )
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    res = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    torch.testing.assert_close(torch.tensor(got), expected, rtol=1e-6, atol=1e-6)


def test_fresh_heads_use_official_initialisation():
    """New heads start as in the release: PyTorch's default Linear init, alpha/beta ~ N(0.1, 0.01), the
    stage-3 calibration start values and k = 5 (what stage-1/2/3 training starts from)."""
    import math

    vc = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, image_size=64, patch_size=32)
    model = AfineModel(AfineConfig(vision_config=vc, natural_hidden_dim=8, natural_mlp_dim=16))
    for linear in (model.natural_head.proj_feat, model.natural_head.proj_head[0], model.natural_head.proj_head[2]):
        bound = 1 / math.sqrt(linear.in_features)
        assert linear.weight.abs().max() <= bound and linear.bias.abs().max() <= bound
        # uniform on [-bound, bound] has std bound/sqrt(3); transformers' normal(0.02) would not
        if linear.weight.numel() > 100:
            assert abs(linear.weight.std().item() - bound / math.sqrt(3)) < 0.2 * bound
    alpha = model.fidelity_head.alpha
    assert abs(alpha.mean().item() - 0.1) < 0.005 and abs(alpha.std().item() - 0.01) < 0.005
    assert model.natural_calibration.yita3.item() == torch.tensor(4.9592).item()
    assert model.fidelity_calibration.yita4.item() == torch.tensor(0.15).item()
    assert model.adapter.k.item() == 5.0
