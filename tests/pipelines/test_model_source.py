"""Checking --model / from_pretrained sources before loading (pipelines.model_source)."""

from __future__ import annotations

import pytest

from pipelines import model_source
from pipelines.model_source import ModelSourceError, check_model_source, looks_like_repo_id


@pytest.mark.parametrize("text, expected", [
    ("org/name", True), ("name", True), ("stable-diffusion-v1-5/stable-diffusion-v1-5", True), ("a.b_c/x-1", True),
    ("./missing-folder", False), ("../x", False), ("/abs/path", False), ("a/b/c", False), ("~/x", False),
    ("org//name", False), ("-org/name", False), ("org/name.", False), ("a--b/c", False), ("a/b..c", False), ("", False),
])
def test_repo_id_shape(text, expected):
    assert looks_like_repo_id(text) is expected


def _fake_cache(root, repo, filename):
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("abc123")
    target = folder / "snapshots" / "abc123" / filename
    target.parent.mkdir(parents=True)
    target.write_text("{}")


def test_sources(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "model").mkdir()
    assert check_model_source(tmp_path / "model", "unet/config.json") == {}
    with pytest.raises(ModelSourceError, match="enhancer folder not found: .*nope"):
        check_model_source(str(tmp_path / "nope"), "unet/config.json", what="enhancer")
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(ModelSourceError, match="is a file"):
        check_model_source(tmp_path / "file.bin", "unet/config.json")
    cache = tmp_path / "cache"
    with pytest.raises(ModelSourceError, match="HF_HUB_OFFLINE"):
        check_model_source("org/name", "unet/config.json", cache_dir=cache)
    _fake_cache(cache, "org/name", "unet/config.json")
    assert check_model_source("org/name", "unet/config.json", cache_dir=cache) == {}
    # online setting but the Hub cannot be reached: cached -> load from the cache only; else fail at once
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(model_source, "_hub_reachable", lambda timeout=3.0: False)
    assert check_model_source("org/name", "unet/config.json", cache_dir=cache) == {"local_files_only": True}
    with pytest.raises(ModelSourceError, match="cannot be reached"):
        check_model_source("org/other", "unet/config.json", cache_dir=cache)
    monkeypatch.setattr(model_source, "_hub_reachable", lambda timeout=3.0: True)
    assert check_model_source("org/other", "unet/config.json", cache_dir=cache) == {}
