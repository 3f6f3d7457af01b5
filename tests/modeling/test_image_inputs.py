"""The shared image loader and the image processor: input types, modes, sizes and clear errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_afine import AfineImageProcessor, ImageLoadError, load_image, load_image_array
from modeling_afine.image_processing_afine import image_to_tensor

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])


@pytest.fixture()
def rgb():
    return np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)


def save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


def test_png_round_trip(tmp_path, rgb):
    p = save(Image.fromarray(rgb), tmp_path / "a.png")
    assert np.array_equal(load_image_array(p), rgb)


def test_grayscale_replicated(tmp_path, rgb):
    g = rgb[..., 0]
    arr = load_image_array(save(Image.fromarray(g), tmp_path / "g.png"))
    assert arr.shape == (40, 56, 3) and all(np.array_equal(arr[..., c], g) for c in range(3))


def test_rgba_alpha_dropped_not_composited(tmp_path, rgb):
    alpha = np.zeros((40, 56, 1), dtype=np.uint8)  # fully transparent: compositing would change colours
    arr = load_image_array(save(Image.fromarray(np.concatenate([rgb, alpha], axis=2)), tmp_path / "a.png"))
    assert np.array_equal(arr, rgb)


def test_16bit_keeps_high_byte(tmp_path):
    v = np.array([[0, 255, 256, 1000, 65535, 40000]], dtype=np.uint16)
    p = save(Image.fromarray(v), tmp_path / "g16.png")
    arr = load_image_array(p)
    assert arr[0, :, 0].tolist() == [0, 0, 1, 3, 255, 156]  # v >> 8, as OpenCV's imread did
    # numpy uint16 input to the processor follows the same rule
    t = image_to_tensor(np.repeat(v[..., None], 3, axis=2))
    assert torch.allclose(t[0, 0] * 255, torch.tensor([0, 0, 1, 3, 255, 156], dtype=torch.float32))


def test_exif_orientation_applied(tmp_path, rgb):
    img = Image.fromarray(rgb)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    p = tmp_path / "o.jpg"
    img.save(p, exif=exif, quality=100)
    arr = load_image_array(p)
    assert arr.shape == (56, 40, 3)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_with_trailing_chunk(rgb, kind: bytes, data: bytes) -> bytes:
    """A PNG of ``rgb`` with one extra chunk between the last IDAT and IEND."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    png = buf.getvalue()
    iend = png.rindex(b"IEND") - 4
    return png[:iend] + _png_chunk(kind, data) + png[iend:]


def test_png_orientation_probe_matches_load_without_decoding(tmp_path, rgb, monkeypatch):
    """probe_image reads a PNG's orientation from its header without decoding pixels, wherever Pillow keeps it:
    an eXIf chunk before the pixels, XMP, or metadata after the pixels (then it must decode, as load_image does)."""
    from PIL import PngImagePlugin

    from modeling_afine.image_io import probe_image

    exif = Image.Exif()
    exif[0x0112] = 6
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="8"/></rdf:RDF></x:xmpmeta>')
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp.decode())
    files = {
        "plain.png": save(Image.fromarray(rgb), tmp_path / "plain.png"),
        "exif_header.png": save(Image.fromarray(rgb), tmp_path / "exif_header.png", exif=exif),
        "xmp_header.png": save(Image.fromarray(rgb), tmp_path / "xmp_header.png", pnginfo=info),
    }
    trailing = tmp_path / "exif_trailing.png"
    trailing.write_bytes(_png_with_trailing_chunk(rgb, b"eXIf", exif.tobytes()))
    files["exif_trailing.png"] = trailing
    text_after = tmp_path / "text_after.png"
    text_after.write_bytes(_png_with_trailing_chunk(rgb, b"tEXt", b"Comment\x00after the pixels"))
    files["text_after.png"] = text_after

    decoded = []
    real_load = PngImagePlugin.PngImageFile.load

    def counting_load(self):
        decoded.append(self.filename)
        return real_load(self)

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", counting_load)
    expected = {"plain.png": (40, 56), "exif_header.png": (56, 40), "xmp_header.png": (56, 40),
                "exif_trailing.png": (56, 40), "text_after.png": (40, 56)}
    for name, path in files.items():
        decoded.clear()
        assert probe_image(path) == expected[name], name
        # Only metadata stored after the pixels makes the probe decode (Pillow reads it only then).
        assert bool(decoded) == (name in ("exif_trailing.png", "text_after.png")), name
        assert load_image(path).size[::-1] == expected[name], name


def test_palette_and_cmyk(tmp_path, rgb):
    assert load_image(save(Image.fromarray(rgb).convert("P"), tmp_path / "p.png")).mode == "RGB"
    assert load_image(save(Image.fromarray(rgb).convert("CMYK"), tmp_path / "c.jpg")).mode == "RGB"


def test_truncated_and_garbage_files(tmp_path, rgb):
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    (tmp_path / "t.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageLoadError, match=r"t\.png.*truncated"):
        load_image(tmp_path / "t.png")
    (tmp_path / "x.png").write_bytes(b"hello")
    with pytest.raises(ImageLoadError, match=r"x\.png.*not a recognised image"):
        load_image(tmp_path / "x.png")
    with pytest.raises(ImageLoadError, match="does not exist"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageLoadError, match="directory"):
        load_image(tmp_path)


def test_pixel_limit(tmp_path, rgb):
    p = save(Image.fromarray(rgb), tmp_path / "a.png")
    with pytest.raises(ImageLoadError, match="exceeds the limit"):
        load_image(p, max_pixels=100)


def test_processor_normalises_exactly(rgb):
    out = AfineImageProcessor()(rgb[:32, :32], rgb[:32, :32])
    expected = ((rgb[:32, :32] / 255.0 - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1)
    np.testing.assert_allclose(out["distorted"][0].numpy(), expected, atol=1e-6)
    assert out["distorted"].dtype == torch.float32


def test_processor_stretch_is_official_bicubic(rgb):
    """Non-multiples of 32 are stretched (not padded) after normalisation, size from the distorted image."""
    out = AfineImageProcessor()(rgb, rgb)
    assert out["distorted"].shape == (1, 3, 64, 64)
    norm = torch.from_numpy(((rgb / 255.0 - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1)).float()[None]
    expected = torch.nn.functional.interpolate(norm, size=(64, 64), mode="bicubic", align_corners=False)
    torch.testing.assert_close(out["distorted"], expected, rtol=0, atol=1e-5)


def test_all_input_types_agree(tmp_path, rgb):
    p = save(Image.fromarray(rgb), tmp_path / "a.png")
    proc = AfineImageProcessor()
    variants = [p, str(p), Image.open(p), rgb, torch.from_numpy(rgb).permute(2, 0, 1), torch.from_numpy(rgb).permute(2, 0, 1).float() / 255]
    outs = [proc(v)["distorted"] for v in variants]
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], rtol=0, atol=1e-6)


def test_batched_processing_and_reference_broadcast(rgb):
    proc = AfineImageProcessor()
    out = proc([rgb, rgb[::-1].copy()], rgb)
    assert out["distorted"].shape == (2, 3, 64, 64) and out["reference"].shape == (1, 3, 64, 64)


def test_mismatched_sizes_are_an_error_unless_opted_in(rgb):
    proc = AfineImageProcessor()
    with pytest.raises(ValueError, match=r"reference\[0\].*same size.*resize_reference=True"):
        proc(rgb, rgb[:30])
    out = proc(rgb, rgb[:30], resize_reference=True)
    assert out["reference"].shape == out["distorted"].shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match="share a size"):
        proc([rgb, rgb[:30]], [rgb, rgb[:30]])
    with pytest.raises(ValueError, match="2 distorted images but 3 references"):
        proc([rgb, rgb], [rgb, rgb, rgb])


def test_bad_array_inputs(rgb):
    proc = AfineImageProcessor()
    with pytest.raises(ValueError, match="channels-last"):
        proc(rgb.transpose(2, 0, 1).copy())
    with pytest.raises(ValueError, match="dtype"):
        proc(rgb.astype(np.int64))
    with pytest.raises(TypeError, match="unsupported image type"):
        proc(12345)
    with pytest.raises(ImageLoadError, match="nope.png"):
        proc("nope.png", rgb)


def test_processor_does_not_modify_inputs(rgb):
    t = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
    t0 = t.clone()
    AfineImageProcessor()(t, t)
    assert torch.equal(t, t0)


def test_processor_save_load(tmp_path):
    proc = AfineImageProcessor(size_multiple=16, resize_reference=True)
    proc.save_pretrained(tmp_path)
    again = AfineImageProcessor.from_pretrained(tmp_path)
    assert again.size_multiple == 16 and again.resize_reference is True and again.image_mean == proc.image_mean
