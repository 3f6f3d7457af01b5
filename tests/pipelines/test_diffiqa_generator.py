"""DiffIQA generator: layout, manifest, recorded choices, resume and sharding (tiny pipeline)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.diffiqa_generator import (
    DiffIQASettings,
    generate_diffiqa,
    list_references,
    read_manifest,
    sample_variant,
    shard_references,
)

from .conftest import random_image

FAST = DiffIQASettings(steps_range=(1, 2), process_size=None)


def _refs(folder, n=2, size=32):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        random_image((size, size), seed=100 + i).save(folder / f"{i:06d}x{i}y0.png")
    return list_references(folder)


def _pil_loader(path):
    return Image.open(path).convert("RGB")


def test_variant_choices_follow_the_paper_distribution():
    s = DiffIQASettings()
    draws = [sample_variant(f"ref{i}", v, s) for i in range(400) for v in range(1, 7)]
    n = len(draws)
    assert abs(sum(d["input"] == "degraded" for d in draws) / n - 0.5) < 0.05
    assert abs(sum(d["upscale"] == 2.0 for d in draws) / n - 0.25) < 0.04
    assert abs(sum(d["start"] == "noise" for d in draws) / n - 0.5) < 0.05
    assert min(d["num_inference_steps"] for d in draws) >= 20 and max(d["num_inference_steps"] for d in draws) <= 1000
    assert {d["seed"] for d in draws} <= set(range(101)) and len({d["seed"] for d in draws}) > 90
    for d in draws:
        if d["start"] == "latent":
            assert d["added_noise_level"] == d["num_inference_steps"]
        else:
            assert d["added_noise_level"] is None
        assert (d["degradation_seed"] is None) == (d["input"] == "gt")
    # deterministic, and different across variants / base seeds
    assert sample_variant("a", 1, s) == sample_variant("a", 1, s)
    assert sample_variant("a", 1, s) != sample_variant("a", 2, s)
    assert sample_variant("a", 1, s) != sample_variant("a", 1, DiffIQASettings(seed=1))


def test_layout_manifest_and_reproducibility(tiny_pipe, tmp_path):
    refs = _refs(tmp_path / "refs")
    out = tmp_path / "images"
    report = generate_diffiqa(tiny_pipe, refs, out, FAST, load_image=_pil_loader, progress=False)
    assert report.written == 12 and not report.failed
    names = [r.stem for r in refs]
    expected = {f"Original/{n}.png" for n in names} | {f"{v:02d}/{n}_{v:02d}.png" for n in names for v in range(1, 7)}
    found = {p.relative_to(out).as_posix() for p in out.rglob("*.png")}
    assert found == expected
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["01", "02", "03", "04", "05", "06", "Original"]
    for r in refs:  # the reference PNG is copied byte for byte
        assert (out / "Original" / r.name).read_bytes() == r.read_bytes()
    for p in out.rglob("*.png"):
        assert Image.open(p).size == (32, 32)
    records = read_manifest(out)
    assert set(records) == expected - {f"Original/{n}.png" for n in names}
    for rel, rec in records.items():
        base = sample_variant(rec["name"], rec["variant"], FAST)
        assert {k: rec["settings"][k] for k in base} == base
        assert rec["reference"] == f"Original/{rec['name']}.png"
        assert rec["prompt"] == "clean, high-resolution, 8k" and rec["guidance_scale"] == 7.5
        if rec["settings"]["input"] == "degraded":
            assert "degradation" in rec["settings"]
    # one output recomputed by hand from its record
    rel, rec = next((k, r) for k, r in sorted(records.items())
                    if r["settings"]["input"] == "gt" and r["settings"]["upscale"] == 1.0)
    st = rec["settings"]
    ref = Image.open(out / rec["reference"]).convert("RGB")
    expected_img = tiny_pipe(
        image=ref, num_inference_steps=st["num_inference_steps"], init_latent_from_noise=st["start"] == "noise",
        added_noise_level=st["added_noise_level"], generator=torch.Generator().manual_seed(st["seed"]),
    ).images[0]
    np.testing.assert_array_equal(np.asarray(Image.open(out / rel)), np.asarray(expected_img))


def test_resume_after_interruption(tiny_pipe, tmp_path):
    refs = _refs(tmp_path / "refs")
    out = tmp_path / "images"
    first = generate_diffiqa(tiny_pipe, refs, out, FAST, load_image=_pil_loader, progress=False, max_outputs=5)
    assert first.interrupted and first.written == 5
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.png") if p.parent.name != "Original"}
    assert len(stamps) == 5 and len(read_manifest(out)) == 5
    # a record lost between writing the image and the manifest line is restored on resume
    lines = (out / "manifest.jsonl").read_text().splitlines()
    (out / "manifest.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    second = generate_diffiqa(tiny_pipe, refs, out, FAST, load_image=_pil_loader, progress=False)
    assert second.written == 7 and second.skipped == 5 and second.recovered_records == 1
    for p, t in stamps.items():
        assert p.stat().st_mtime_ns == t  # finished outputs are not redone
    records = read_manifest(out)
    assert len(records) == 12
    assert not list(out.rglob("*.tmp"))
    third = generate_diffiqa(tiny_pipe, refs, out, FAST, load_image=_pil_loader, progress=False)
    assert third.written == 0 and third.skipped == 12


def test_two_workers_write_disjoint_outputs(tiny_pipe, tmp_path):
    refs = _refs(tmp_path / "refs", n=3)
    out = tmp_path / "images"
    s = DiffIQASettings(steps_range=(1, 1), process_size=None, num_variants=2)
    assert shard_references(refs, 0, 2) == [refs[0], refs[2]] and shard_references(refs, 1, 2) == [refs[1]]
    written = {}
    for rank in (0, 1):
        before = set(out.rglob("*.png")) if out.exists() else set()
        generate_diffiqa(tiny_pipe, list(reversed(refs)), out, s, rank=rank, world=2, load_image=_pil_loader, progress=False)
        written[rank] = set(out.rglob("*.png")) - before
    assert written[0] and written[1] and not written[0] & written[1]
    assert len(written[0] | written[1]) == 3 * 3
    parts = out / "manifest.jsonl.parts"
    m0 = [json.loads(x) for x in (parts / "rank-00000-of-00002.jsonl").read_text().splitlines()]
    m1 = [json.loads(x) for x in (parts / "rank-00001-of-00002.jsonl").read_text().splitlines()]
    assert {r["name"] for r in m0} == {refs[0].stem, refs[2].stem} and {r["name"] for r in m1} == {refs[1].stem}
    assert len(read_manifest(out)) == 6 and not (out / "manifest.jsonl").exists()  # no barrier: no merge yet
    # One process resumes over the folder: nothing to generate; the parts are merged in input order.
    again = generate_diffiqa(tiny_pipe, refs, out, s, load_image=_pil_loader, progress=False)
    assert again.written == 0 and again.skipped == 6
    merged = [json.loads(x)["file"] for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert merged == [f"{v:02d}/{r.stem}_{v:02d}.png" for r in refs for v in (1, 2)]
    assert not parts.exists() and len(read_manifest(out)) == 6


def test_barrier_then_rank0_merges_and_older_worker_files_are_read(tiny_pipe, tmp_path):
    refs = _refs(tmp_path / "refs", n=2)
    out = tmp_path / "images"
    s = DiffIQASettings(steps_range=(1, 1), process_size=None, num_variants=1)
    # A record left by an earlier version's per-worker file is read (no regeneration) and merged.
    first = generate_diffiqa(tiny_pipe, refs, out, s, rank=1, world=2, load_image=_pil_loader, progress=False)
    assert first.written == 1
    part = out / "manifest.jsonl.parts" / "rank-00001-of-00002.jsonl"
    (out / "manifest.1-of-2.jsonl").write_bytes(part.read_bytes())
    part.unlink()
    calls = []
    report = generate_diffiqa(tiny_pipe, refs, out, s, rank=0, world=2, load_image=_pil_loader, progress=False,
                              barrier=lambda: calls.append("barrier"))
    assert report.written == 1 and calls == ["barrier"]
    merged = [json.loads(x)["file"] for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert merged == [f"01/{r.stem}_01.png" for r in refs]
    assert not (out / "manifest.1-of-2.jsonl").exists() and not (out / "manifest.jsonl.parts").exists()


def test_unreadable_reference_is_reported_and_others_continue(tiny_pipe, tmp_path):
    refs = _refs(tmp_path / "refs", n=1)
    bad = tmp_path / "refs" / "broken.png"
    bad.write_bytes(b"not an image")
    report = generate_diffiqa(tiny_pipe, refs + [bad], tmp_path / "images",
                              DiffIQASettings(steps_range=(1, 1), process_size=None, num_variants=1), progress=False)
    assert report.written == 1 and len(report.failed) == 1 and "broken.png" in report.failed[0][0] + report.failed[0][1]


def test_output_tree_reads_as_diffiqa_layout(tiny_pipe, tmp_path):
    layouts = pytest.importorskip("dataset_scripts.layouts")
    problems = pytest.importorskip("dataset_scripts.problems")
    refs = _refs(tmp_path / "refs")
    generate_diffiqa(tiny_pipe, refs, tmp_path / "DiffIQA" / "images", FAST, load_image=_pil_loader, progress=False)
    report = problems.CheckReport(root=str(tmp_path / "DiffIQA"), dataset="DiffIQA")
    scan = layouts.scan_diffiqa_folder(tmp_path / "DiffIQA", report)
    assert scan.references == sorted(r.stem for r in refs)
    assert scan.variants == ["01", "02", "03", "04", "05", "06"]
    kinds = {p.kind for p in report.problems}
    assert not kinds & {"missing_image", "wrong_count", "inconsistent"}, report.format()


def test_interrupted_run_loads_through_the_diffiqa_builder(tiny_pipe, tmp_path):
    pytest.importorskip("datasets")
    dataset_scripts = pytest.importorskip("dataset_scripts")
    if not hasattr(dataset_scripts, "load"):
        pytest.skip("dataset_scripts.load not available")
    refs = _refs(tmp_path / "refs")
    out = tmp_path / "gen"
    generate_diffiqa(tiny_pipe, refs, out, FAST, load_image=_pil_loader, progress=False, max_outputs=7)
    generate_diffiqa(tiny_pipe, refs, out, FAST, load_image=_pil_loader, progress=False)
    ds = dataset_scripts.load("diffiqa", data_dir=out, name="images", cache_dir=tmp_path / "cache", split="full")
    assert len(ds) == 12
    rows = sorted((r["group"], r["variant"], r["distorted_name"], r["reference_name"]) for r in ds)
    names = sorted(r.stem for r in refs)
    assert rows == sorted((n, f"{v:02d}", f"{n}_{v:02d}.png", f"{n}.png") for n in names for v in range(1, 7))


def test_torn_manifest_line_is_repaired_on_resume(tiny_pipe, tmp_path):
    """Power loss while writing a manifest record: the line is cut mid-way. Resuming must not glue the
    next record onto it (which would make both unreadable): every record ends up readable, none lost."""
    refs = _refs(tmp_path / "refs")
    out = tmp_path / "images"
    generate_diffiqa(tiny_pipe, refs, out, FAST, load_image=_pil_loader, progress=False, max_outputs=5)
    manifest = out / "manifest.jsonl"
    data = manifest.read_bytes()
    last_start = data.rstrip(b"\n").rfind(b"\n") + 1
    manifest.write_bytes(data[: last_start + (len(data) - last_start) // 2])  # the 5th record, torn
    torn_file = json.loads(data[last_start:])["file"]
    report = generate_diffiqa(tiny_pipe, refs, out, FAST, load_image=_pil_loader, progress=False)
    assert report.written == 7 and report.recovered_records == 1
    lines = manifest.read_text().splitlines()
    recs = [json.loads(line) for line in lines]  # every line parses: nothing swallowed
    assert len(recs) == 12 and len({r["file"] for r in recs}) == 12
    assert next(r for r in recs if r["file"] == torn_file)["recovered"] is True
    assert set(read_manifest(out)) == {p.relative_to(out).as_posix() for p in out.glob("0*/*.png")}

    # only the newline missing: the record is complete and kept as it is
    manifest.write_bytes(manifest.read_bytes().rstrip(b"\n"))
    again = generate_diffiqa(tiny_pipe, refs, out, FAST, load_image=_pil_loader, progress=False)
    assert again.written == 0 and again.recovered_records == 0
    assert [json.loads(line) for line in manifest.read_text().splitlines()] == recs


def test_outputs_are_durable_before_they_are_recorded(tiny_pipe, tmp_path, monkeypatch):
    """Order of one output: image fsync -> rename -> folder fsync -> manifest fsync."""
    import os
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc/self/fd")
    import pipelines.durable as durable

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(durable.os, "fsync", fsync)
    monkeypatch.setattr(durable.os, "replace", replace)
    refs = _refs(tmp_path / "refs", n=1)
    out = tmp_path / "images"
    generate_diffiqa(tiny_pipe, refs, out, DiffIQASettings(steps_range=(1, 1), process_size=None, num_variants=1),
                     load_image=_pil_loader, progress=False)
    image = str(out / "01" / f"{refs[0].stem}_01.png")
    expected = [("fsync", image + ".tmp"), ("replace", image), ("fsync", str(out / "01")),
                ("fsync", str(out / "manifest.jsonl"))]
    i = events.index(expected[0])
    assert events[i : i + 4] == expected, events
