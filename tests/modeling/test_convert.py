"""Conversion from the official layouts, and its refusals."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from modeling_afine.convert_afine_checkpoint import (
    STAGE_FILES,
    ConversionError,
    build_model_from_official,
    convert_afine_checkpoint,
    load_official_state_dict,
)

from .reference_afine import random_official_checkpoint


@pytest.fixture(scope="module")
def parts():
    return random_official_checkpoint(seed=7)


def test_fused_attention_split_and_names(parts):
    model = build_model_from_official(parts)
    sd = model.state_dict()
    fused = parts["finetuned_clip"]["visual.transformer.resblocks.1.attn.in_proj_weight"]
    d = fused.shape[1]
    assert torch.equal(sd["vision_model.encoder.layers.1.self_attn.q_proj.weight"], fused[:d])
    assert torch.equal(sd["vision_model.encoder.layers.1.self_attn.k_proj.weight"], fused[d : 2 * d])
    assert torch.equal(sd["vision_model.encoder.layers.1.self_attn.v_proj.weight"], fused[2 * d :])
    assert torch.equal(sd["vision_model.embeddings.position_embedding.weight"], parts["finetuned_clip"]["visual.positional_embedding"])
    assert torch.equal(sd["fidelity_head.alpha"], parts["fidelity"]["alpha"])
    assert torch.equal(sd["adapter.k"], parts["adapter"]["k"])


def test_missing_key_is_rejected(tmp_path, parts):
    bad = copy.deepcopy(parts)
    del bad["natural"]["proj_feat.bias"]
    del bad["finetuned_clip"]["visual.ln_pre.weight"]
    torch.save(bad, tmp_path / "afine.pth")
    with pytest.raises(ConversionError) as err:
        convert_afine_checkpoint(tmp_path / "afine.pth", tmp_path / "out")
    msg = str(err.value)
    assert "natural_head.proj_feat.bias" in msg and "vision_model.pre_layrnorm.weight" in msg
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_wrong_shape_is_rejected(tmp_path, parts):
    bad = copy.deepcopy(parts)
    bad["fidelity"]["alpha"] = torch.zeros(1, 1, 10)
    torch.save(bad, tmp_path / "afine.pth")
    with pytest.raises(ConversionError, match=r"wrong shape.*fidelity_head.alpha"):
        convert_afine_checkpoint(tmp_path / "afine.pth", tmp_path / "out")


def test_unexpected_key_and_top_level_keys_are_rejected(tmp_path, parts):
    bad = copy.deepcopy(parts)
    bad["finetuned_clip"]["visual.extra_thing"] = torch.zeros(3)
    torch.save(bad, tmp_path / "a.pth")
    with pytest.raises(ConversionError, match="visual.extra_thing"):
        convert_afine_checkpoint(tmp_path / "a.pth", tmp_path / "out")
    bad = copy.deepcopy(parts)
    del bad["adapter"]
    bad["optimizer"] = {}
    torch.save(bad, tmp_path / "b.pth")
    with pytest.raises(ConversionError, match=r"missing top-level keys \['adapter'\].*unexpected top-level keys \['optimizer'\]"):
        load_official_state_dict(tmp_path / "b.pth")


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_unsafe_pickle_is_refused(tmp_path, parts, capsys):
    bad = dict(parts)
    bad["adapter"] = {"k": torch.tensor(1.0), "payload": Evil()}
    with open(tmp_path / "evil.pth", "wb") as fh:
        pickle.dump(bad, fh)
    torch.save(bad, tmp_path / "evil2.pth")
    for name in ("evil.pth", "evil2.pth"):
        with pytest.raises(ConversionError, match="unsafe"):
            load_official_state_dict(tmp_path / name)
    assert "this must never run" not in capsys.readouterr().out


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "x.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ConversionError, match="x.pth"):
        load_official_state_dict(tmp_path / "x.pth")
    with pytest.raises(ConversionError, match="does not exist"):
        load_official_state_dict(tmp_path / "missing.pth")


def test_per_stage_files_equal_merged(tmp_path, parts):
    """The official training outputs (BasicSR `params` wrappers, raw CLIP state dict) convert identically."""
    folder = tmp_path / "stages"
    folder.mkdir()
    for part, name in STAGE_FILES.items():
        payload = parts[part] if part == "finetuned_clip" else {"params": {f"module.{k}" if part == "natural" else k: v for k, v in parts[part].items()}}
        torch.save(payload, folder / name)
    a = build_model_from_official(folder).state_dict()
    b = build_model_from_official(parts).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    (folder / "net_dhead.pth").unlink()
    with pytest.raises(ConversionError, match="net_dhead.pth"):
        load_official_state_dict(folder)


def test_text_tower_is_ignored(parts):
    no_text = copy.deepcopy(parts)
    no_text["finetuned_clip"] = {k: v for k, v in parts["finetuned_clip"].items() if k.startswith("visual.")}
    a = build_model_from_official(no_text).state_dict()
    b = build_model_from_official(parts).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_convert(tmp_path, parts):
    from modeling_afine.cli import main

    torch.save(parts, tmp_path / "afine.pth")
    assert main(["convert", str(tmp_path / "afine.pth"), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert main(["convert", str(tmp_path / "nope.pth"), str(tmp_path / "out2")]) == 1
