"""Hostile input files (generated at test time by tests/hostile_corpus.py) through the loader, the scorer and
the CLI: each ends in a documented result (loaded as 8-bit RGB, or one ImageLoadError line naming the file),
within seconds and bounded memory; in a batch every good pair is still scored."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import threading
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_afine.image_io import (
    ALLOW_TRUNCATED_ENV,
    MAX_PIXELS_ENV,
    ImageLoadError,
    load_image,
    load_image_array,
    probe_image,
)
from modeling_afine.scoring import AfineScorer

from ..hostile_corpus import build_corpus, build_cut_files, png_bytes

ROOT = Path(__file__).resolve().parents[2]
# Every case the factory can write; platform-dependent ones (FIFO, /dev/zero, permission) may be absent.
CASES = [
    "good.png", "cmyk.jpg", "gray16.png", "palette.png", "rgba.png", "exif_rotated.jpg", "one_pixel.png",
    "tall_1x100000.png", "wide_100000x2.png", "jpeg_named.png", "bmp.bmp", "tiff.tif", "gif.gif",
    "empty.png", "text.png", "bomb_40000.png", "bomb_wide.png", "lying_png_10000.png", "lying_png_gray.png",
    "truncated.png", "truncated.jpg", "header_only.jpg", "lying_jpeg.jpg", "lying_bmp.bmp", "lying_gif.gif",
    "lying_tiff.tif", "lying_webp.webp", "lying_png_interlaced.png", "lying_png16.png", "lying_tiff_deflate.tif",
    "lying_ppm.ppm", "lying_tga.tga", "truncated.webp", "lying_progressive.jpg", "bad_checksum.png", "metadata_bomb.png", "eps_named.png", "missing.png", "directory.png", "loop.png",
    "fifo.png", "dev_zero", "unreadable.png",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    cases = build_corpus(tmp_path_factory.mktemp("hostile"))
    yield cases
    unreadable = cases.get("unreadable.png")
    if unreadable is not None:
        unreadable.path.chmod(0o644)


def test_corpus_is_complete(corpus):
    assert set(corpus) <= set(CASES)
    assert len(corpus) >= len(CASES) - 6  # at most the platform/codec-dependent ones are missing


@pytest.mark.parametrize("case", CASES)
def test_load_image_documented_result(corpus, case):
    if case not in corpus:
        pytest.skip(f"{case} cannot be made on this platform / as this user")
    c = corpus[case]
    tracemalloc.start()
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            result = load_image(c.path)
            error = None
        except ImageLoadError as exc:
            result, error = None, exc
    elapsed = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert elapsed < 5.0, f"{case} took {elapsed:.1f} s"
    assert peak < 64 * 2**20, f"{case} allocated {peak / 2**20:.0f} MiB"
    if c.expect == "ok":
        assert error is None, f"{case}: {error}"
        assert result.mode == "RGB" and result.size == c.size
    else:
        assert error is not None, f"{case} loaded as {result.size if result else None}"
        message = str(error)
        assert str(c.path) in message, message
        assert "\n" not in message
        assert c.match in message.lower(), message


def test_decoded_pixels_follow_the_rules(corpus):
    rgb = load_image_array(corpus["good.png"].path)
    # 16-bit keeps the high byte (v*257 >> 8 == v), grayscale replicated
    gray = load_image_array(corpus["gray16.png"].path)
    assert np.array_equal(gray[..., 0], gray[..., 2])
    assert np.array_equal(gray[..., 0], rgb[..., 0])
    # wrong extension: content decides; EXIF rotation applied (stored 40x32 -> shown 32x40)
    assert load_image(corpus["jpeg_named.png"].path).size == (40, 32)
    assert load_image(corpus["exif_rotated.jpg"].path).size == (32, 40)
    assert np.array_equal(load_image_array(corpus["rgba.png"].path), rgb)  # alpha dropped, not composited
    assert np.array_equal(load_image_array(corpus["bmp.bmp"].path), rgb)


@pytest.mark.parametrize("case", ["good.png", "exif_rotated.jpg", "jpeg_named.png", "wide_100000x2.png"])
def test_probe_image_matches_load(corpus, case):
    path = corpus[case].path
    width, height = load_image(path).size
    assert probe_image(path) == (height, width)


@pytest.mark.parametrize("case", ["bomb_40000.png", "empty.png", "text.png", "fifo.png", "loop.png", "directory.png"])
def test_probe_image_refuses_from_the_header(corpus, case):
    if case not in corpus:
        pytest.skip("not available here")
    with pytest.raises(ImageLoadError, match="^" + str(corpus[case].path).replace("\\", "\\\\")):
        probe_image(corpus[case].path)


def test_pillow_bomb_check_never_decides(tmp_path, monkeypatch):
    """Our limit decides: with Pillow's own limit far below the image, it still loads without warning."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    arr = np.random.default_rng(0).integers(0, 256, (64, 48, 3), dtype=np.uint8)
    paths = []
    for fmt, suffix in (("PNG", ".png"), ("GIF", ".gif"), ("JPEG", ".jpg"), ("TIFF", ".tif"), ("BMP", ".bmp")):
        img = Image.fromarray(arr).convert("P") if fmt == "GIF" else Image.fromarray(arr)
        paths.append(tmp_path / f"x{suffix}")
        img.save(paths[-1], fmt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for path in paths:
            assert load_image(path).size == (48, 64)
            assert probe_image(path) == (64, 48)
    assert Image.MAX_IMAGE_PIXELS == 100  # restored after the GIF decode

    # the same from many threads at once: each decides under the lock, none sees Pillow's check
    failures: list[BaseException] = []

    def worker(offset: int) -> None:
        for k in range(3 * len(paths)):
            try:
                assert load_image(paths[(k + offset) % len(paths)]).size == (48, 64)
            except BaseException as exc:  # noqa: BLE001 - collected for the assertion below
                failures.append(exc)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    assert not failures, failures[:3]
    assert Image.MAX_IMAGE_PIXELS == 100


def test_pixel_limit_env_is_read_at_call_time(tmp_path, monkeypatch):
    path = tmp_path / "a.png"
    Image.new("RGB", (50, 40)).save(path)
    monkeypatch.setenv(MAX_PIXELS_ENV, "1999")
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    message = str(info.value)
    assert str(path) in message and "50x40 (WxH)" in message and "1,999" in message and MAX_PIXELS_ENV in message
    with pytest.raises(ImageLoadError, match=MAX_PIXELS_ENV):
        probe_image(path)
    monkeypatch.setenv(MAX_PIXELS_ENV, "2000")
    assert load_image(path).size == (50, 40)
    # a header above Pillow's own bomb limit (2 * 89M) is refused by our limit, and the message is ours
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bytes(20000, 10000, 1))
    monkeypatch.delenv(MAX_PIXELS_ENV)
    assert load_image(path).size == (50, 40)
    monkeypatch.setenv(MAX_PIXELS_ENV, str(150_000_000))
    with pytest.raises(ImageLoadError, match="150,000,000"):
        load_image(bomb)
    # raised above the header size, the file reaches the truncation check (Pillow never objects)
    monkeypatch.setenv(MAX_PIXELS_ENV, str(300_000_000))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageLoadError, match="pixel data ends after row 1 of 10000"):
            load_image(bomb)


def test_truncated_opt_in(corpus, monkeypatch):
    path = corpus["lying_png_gray.png"].path
    assert load_image(path, allow_truncated=True).size == (3000, 3000)
    monkeypatch.setenv(ALLOW_TRUNCATED_ENV, "1")
    img = load_image_array(corpus["truncated.jpg"].path)
    assert img.shape == (64, 64, 3)
    with pytest.raises(ImageLoadError, match="row 7 of 3000"):
        load_image(path, allow_truncated=False)


def test_threads_get_the_same_results(corpus):
    """Many threads at once (GIF decodes flip Pillow switches under an exclusive lock): same outcomes."""
    names = [n for n in corpus if n not in ("fifo.png", "dev_zero", "lying_webp.webp")]

    def outcome(name):
        try:
            return load_image(corpus[name].path).size
        except ImageLoadError as exc:
            return str(exc)

    expected = {n: outcome(n) for n in names}
    got: dict[str, list] = {n: [] for n in names}
    old = Image.MAX_IMAGE_PIXELS

    def worker(offset):
        for k in range(len(names)):
            name = names[(k + offset) % len(names)]
            got[name].append(outcome(name))

    threads = [threading.Thread(target=worker, args=(i * 3,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(got[n] == [expected[n]] * 6 for n in names)
    assert Image.MAX_IMAGE_PIXELS == old


def test_truncation_opt_in_does_not_leak_to_other_threads(corpus):
    """One thread opting in to truncated files never lets another thread's strict load through."""
    path = corpus["truncated.jpg"].path
    outcomes: list[tuple[bool, bool]] = []

    def worker(permissive: bool) -> None:
        for _ in range(20):
            try:
                load_image(path, allow_truncated=permissive)
                outcomes.append((permissive, True))
            except ImageLoadError:
                outcomes.append((permissive, False))

    threads = [threading.Thread(target=worker, args=(i % 2 == 0,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(outcomes) == 120
    assert all(loaded == permissive for permissive, loaded in outcomes)


def test_odd_names(tmp_path):
    with pytest.raises(ImageLoadError, match="invalid file name"):
        load_image("bad\0name.png")
    plain = tmp_path / "file"
    plain.write_bytes(b"x")
    with pytest.raises(ImageLoadError, match=str(plain / "x.png")):
        load_image(plain / "x.png")  # a path through a regular file



def test_tiny_and_cut_files_raise_only_image_load_error(tmp_path):
    """1-3 byte files and every format's header cut after each of its first 64 bytes: a format plugin's own
    failure (e.g. DIB's magic check raising struct.error on 3 bytes) never escapes as anything but one
    ImageLoadError line naming the file. No cut file holds its pixels, so load_image refuses every one;
    probe_image may read a complete header."""
    paths = build_cut_files(tmp_path)
    assert len(paths) > 700 and {p.suffix for p in paths} >= {".png", ".jpg", ".bmp", ".gif", ".tif", ".ppm", ".tga"}
    assert {p.stat().st_size for p in paths if p.name.startswith("tiny_")} == {1, 2, 3}
    start = time.perf_counter()
    probed = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's "Corrupt EXIF data" UserWarning on cut TIFFs
        for path in paths:
            with pytest.raises(ImageLoadError) as info:
                load_image(path)
            message = str(info.value)
            assert message.startswith(str(path) + ": ") and "\n" not in message, message
            try:
                height, width = probe_image(path)
                probed += 1
                assert height > 0 and width > 0
            except ImageLoadError as exc:
                assert str(exc).startswith(str(path) + ": "), exc
            with pytest.raises(ImageLoadError):
                load_image(path.read_bytes())  # the same bytes in memory
    assert 0 < probed < len(paths)
    assert time.perf_counter() - start < 20

# ------------------------------------------------------------------------------------ scorer and CLI


def _good_pairs(folder: Path) -> list[tuple[Path, Path]]:
    rng = np.random.default_rng(1)
    pairs = []
    for k, (w, h) in enumerate([(48, 40), (48, 40), (1, 1), (1, 3000), (5000, 2), (33, 64)]):
        ref = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        dis = np.clip(ref.astype(int) + rng.integers(-20, 20, ref.shape), 0, 255).astype(np.uint8)
        rp, dp = folder / f"ref{k}.png", folder / f"dis{k}.png"
        Image.fromarray(ref).save(rp)
        Image.fromarray(dis).save(dp)
        pairs.append((dp, rp))
    return pairs


BAD_FOR_SCORING = [
    "empty.png", "text.png", "bomb_40000.png", "lying_png_10000.png", "truncated.jpg", "lying_jpeg.jpg",
    "eps_named.png", "missing.png", "directory.png", "loop.png", "fifo.png", "dev_zero",
]


def test_iter_scores_scores_good_pairs_and_names_bad_files(model, corpus, tmp_path):
    good = _good_pairs(tmp_path)
    bad = [corpus[n].path for n in BAD_FOR_SCORING if n in corpus]
    anchor_dis, anchor_ref = good[0]
    pairs = list(good)
    pairs += [(b, anchor_ref) for b in bad]  # bad distorted images
    pairs += [(anchor_dis, b) for b in bad]  # bad references
    mismatch = (good[1][0], good[5][1])  # 48x40 against 33x64
    pairs.append(mismatch)
    scorer = AfineScorer(model, batch_size=3)
    start = time.perf_counter()
    results = list(scorer.iter_scores([d for d, _ in pairs], [r for _, r in pairs]))
    assert time.perf_counter() - start < 60
    assert sorted(i for i, _ in results) == list(range(len(pairs)))
    by_index = dict(results)
    for i in range(len(good)):
        assert isinstance(by_index[i], dict), by_index[i]
        assert torch.isfinite(by_index[i]["score"]) and 0 <= float(by_index[i]["score"]) <= 100
    for j, b in enumerate(bad):
        for i in (len(good) + j, len(good) + len(bad) + j):
            exc = by_index[i]
            assert isinstance(exc, ImageLoadError), (b, exc)
            assert str(b) in str(exc) and "\n" not in str(exc)
    exc = by_index[len(pairs) - 1]
    assert isinstance(exc, ValueError)
    assert str(mismatch[0]) in str(exc) and str(mismatch[1]) in str(exc)
    assert "48x40 (WxH)" in str(exc) and "33x64 (WxH)" in str(exc)
    # the same through a shared reference: each mismatched distorted image named with the reference
    shared = list(scorer.iter_scores([good[0][0], good[5][0], bad[0]], good[0][1]))
    outcome = dict(shared)
    assert isinstance(outcome[0], dict)
    assert str(good[5][0]) in str(outcome[1]) and str(good[0][1]) in str(outcome[1])
    assert str(bad[0]) in str(outcome[2])


def test_scoring_budget(model, tmp_path, monkeypatch):
    """Images over AFINE_MAX_SCORE_PIXELS are refused from their header, as distorted or as reference."""
    (dis, ref), (dis2, ref2) = _good_pairs(tmp_path)[:2]
    small = tmp_path / "small.png"
    Image.new("RGB", (20, 10)).save(small)
    monkeypatch.setenv("AFINE_MAX_SCORE_PIXELS", "1500")  # 20x10 -> 32x32 passes, 48x40 -> 64x64 does not
    scorer = AfineScorer(model)
    out = dict(scorer.iter_scores([dis, small], [small, ref2]))
    for index, path in ((0, dis), (1, ref2)):
        assert isinstance(out[index], ImageLoadError)
        message = str(out[index])
        assert str(path) in message and "48x40 (WxH), stretched to 64x64 (WxH)" in message
        assert "4,096 pixels" in message and "AFINE_MAX_SCORE_PIXELS" in message
    with pytest.raises(ImageLoadError, match="scoring budget"):
        scorer.score(small, ref)  # a shared reference over the budget stops at once
    monkeypatch.setenv("AFINE_MAX_SCORE_PIXELS", "0")
    (_, ok), = list(scorer.iter_scores([dis], ref))
    assert isinstance(ok, dict)


def test_cli_batch_with_hostile_files(converted_dir, corpus, tmp_path):
    """The whole corpus through ``afine score --pairs``: loadable oddities scored against themselves, every bad
    file (half as distorted, half as reference) named in exactly one stderr line, no traceback, bounded RSS."""
    good = [(str(d), str(r)) for d, r in _good_pairs(tmp_path)]
    good += [(str(c.path), str(c.path)) for c in corpus.values() if c.expect == "ok"]
    bad = [str(c.path) for c in corpus.values() if c.expect == "error"]
    anchor_dis, anchor_ref = good[0]
    pairs = list(good)
    pairs += [(b, anchor_ref) for b in bad[::2]]  # bad distorted images
    pairs += [(anchor_dis, b) for b in bad[1::2]]  # bad references
    csv_path = tmp_path / "pairs.csv"
    with open(csv_path, "w", newline="") as fh:
        csv.writer(fh).writerows([("distorted", "reference")] + pairs)
    out = tmp_path / "scores.jsonl"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    hwm = tmp_path / "peak_rss"
    # `python -m modeling_afine score ...`, recording the process's own peak RSS (VmHWM) when it exits
    wrapper = (
        "import atexit, runpy, sys\n"
        "def _peak():\n"
        "    try:\n"
        "        status = open('/proc/self/status').read()\n"
        "    except OSError:\n"
        "        return\n"
        "    kib = [line.split()[1] for line in status.splitlines() if line.startswith('VmHWM:')]\n"
        f"    open({str(hwm)!r}, 'w').write(kib[0] if kib else '')\n"
        "atexit.register(_peak)\n"
        "sys.argv = ['afine'] + sys.argv[1:]\n"
        "runpy.run_module('modeling_afine', run_name='__main__')\n"
    )
    cmd = [sys.executable, "-c", wrapper, "score", "--pairs", str(csv_path), "--output", str(out),
           "--model", str(converted_dir), "-q", "--batch-size", "4"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    elapsed = time.perf_counter() - start
    stderr = proc.stderr
    assert elapsed < 120, f"{elapsed:.0f} s"
    if hwm.exists() and hwm.read_text():
        peak_mib = int(hwm.read_text()) / 1024
        print(f"CLI: {elapsed:.1f} s, peak RSS {peak_mib:.0f} MiB")
        assert peak_mib < 1536, f"peak RSS {peak_mib:.0f} MiB"
    assert proc.returncode == 1, stderr
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    for b in bad:
        naming = [line for line in lines if b in line]
        assert len(naming) == 1, (b, naming)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    scored = {(os.path.realpath(r["distorted"]), os.path.realpath(r["reference"])) for r in records if "error" not in r}
    assert all((os.path.realpath(d), os.path.realpath(r)) in scored for d, r in good)
    assert len([r for r in records if "error" in r]) == len(bad)


# ------------------------------------------------------------------------------------------- convert


class _Evil:
    """Pickles to a call of os.system: torch.load(weights_only=True) must refuse it without running it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("legacy", [False, True])
def test_convert_refuses_malicious_checkpoint(tmp_path, capsys, legacy):
    from modeling_afine.convert_afine_checkpoint import main

    marker = tmp_path / "was_executed"
    evil = tmp_path / "afine.pth"
    torch.save({"finetuned_clip": _Evil(marker)}, evil, _use_new_zipfile_serialization=not legacy)
    assert main([str(evil), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert not marker.exists()
    assert len(err.strip().splitlines()) == 1 and "\x1b" not in err
    assert str(evil) in err and "refusing to load" in err and "system" in err
    assert "Weights only load failed" not in err  # our own reason, not torch's paragraph


def test_convert_names_non_checkpoints(tmp_path, corpus, capsys):
    from modeling_afine.convert_afine_checkpoint import main

    text = tmp_path / "notes.pth"
    text.write_text("hello\n")
    for source, kind in ((corpus["good.png"].path, "a PNG image"), (text, "text"), (corpus["empty.png"].path, "empty")):
        assert main([str(source), str(tmp_path / "out")]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(source) in err and kind in err, err
        assert "pickle" not in err
    assert not (tmp_path / "out").exists()
