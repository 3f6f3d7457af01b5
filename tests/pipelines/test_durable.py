"""Crash-safe JSON-lines logs and image writes (pipelines.durable)."""

from __future__ import annotations

import json

from PIL import Image

from pipelines.durable import JsonlLog, read_jsonl, save_png_durable


def test_torn_last_line_does_not_swallow_the_next_record(tmp_path):
    path = tmp_path / "log.jsonl"
    with JsonlLog(path) as log:
        log.append({"file": "a", "n": 1})
        log.append({"file": "b", "n": 2})
    data = path.read_bytes()
    path.write_bytes(data[:-7])  # cut inside the second record
    with JsonlLog(path) as log:
        log.append({"file": "c", "n": 3})
    lines = path.read_text().splitlines()
    assert [json.loads(x)["file"] for x in lines] == ["a", "c"]  # every line parses
    # a complete record whose newline was lost is kept
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    with JsonlLog(path) as log:
        log.append({"file": "d"})
    assert [r["file"] for r in read_jsonl(path)] == ["a", "c", "d"]
    # a file that is only a torn line
    other = tmp_path / "other.jsonl"
    other.write_bytes(b'{"file": "x", "n"')
    with JsonlLog(other) as log:
        log.append({"file": "y"})
    assert other.read_text() == '{"file": "y"}\n'


def test_png_written_completely_or_not_at_all(tmp_path):
    target = tmp_path / "sub" / "x.png"
    save_png_durable(Image.new("RGB", (5, 4), (1, 2, 3)), target)
    assert Image.open(target).size == (5, 4) and not list(tmp_path.rglob("*.tmp"))
