"""Hostile image files for the robustness tests, generated at test time (nothing binary is committed).

``build_corpus(folder)`` writes every case and returns ``{case: Case}``. A case is either expected to load
(``expect="ok"``, with the RGB size it must load as) or to be refused with one :class:`ImageLoadError` whose
message names the file and contains ``match`` (a lower-case fragment). All files are tiny (bytes to a few
kB) even when their headers claim gigapixels, so the whole corpus is written in well under a second.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

__all__ = ["Case", "build_corpus", "build_cut_files", "png_bytes", "png_chunk"]


@dataclass
class Case:
    path: Path
    expect: str  # "ok" or "error"
    match: str = ""  # lower-case fragment of the error message
    size: Optional[tuple[int, int]] = None  # (W, H) of a loadable case, after EXIF orientation


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(width: int, height: int, rows: int, *, color: int = 2, depth: int = 8, fill: int = 0) -> bytes:
    """A PNG whose header claims ``width x height`` but whose complete zlib stream holds ``rows`` rows."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color]
    row = b"\0" + bytes([fill]) * (width * channels * depth // 8)
    raw = row * rows
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(raw, 9)) + png_chunk(b"IEND", b"")


def _gradient(width: int, height: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _bmp_header(width: int, height: int) -> bytes:
    """24-bit BMP header claiming ``width x height`` (no pixel data follows)."""
    row = (width * 3 + 3) & ~3
    data_size = row * height
    file_header = b"BM" + struct.pack("<IHHI", 54 + data_size, 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, data_size, 2835, 2835, 0, 0)
    return file_header + info


def _gif_lying(width: int, height: int) -> bytes:
    """A GIF whose screen and frame claim ``width x height`` but whose LZW data covers 4 pixels."""
    real = Image.new("P", (2, 2), 1)
    real.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    data = bytearray(_encode(real, "GIF"))
    data[6:10] = struct.pack("<HH", width, height)  # logical screen
    at = data.index(b",")  # image descriptor: x, y, w, h
    data[at + 5 : at + 9] = struct.pack("<HH", width, height)
    return bytes(data)


def _has_webp() -> bool:
    from PIL import features

    return bool(features.check("webp"))


def _png_interlaced_lying(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 1)
    raw = b"\0" * ((width + 7) // 8 * 3 + 1) * 3
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b"")


def _tga_lying(height: int) -> bytes:
    data = bytearray(_encode(Image.new("RGB", (16, 8), (200, 10, 10)), "TGA", compression="tga_rle"))
    data[14:16] = struct.pack("<H", height)
    return bytes(data)


def _tiff_lying(width: int, height: int, compression: str = "raw") -> bytes:
    real = Image.fromarray(_gradient(8, 8))
    data = _encode(real, "TIFF", compression=compression)
    # patch ImageWidth (256) and ImageLength (257) in the first IFD
    order = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack(order + "I", data[4:8])
    (count,) = struct.unpack(order + "H", data[ifd : ifd + 2])
    out = bytearray(data)
    for k in range(count):
        at = ifd + 2 + 12 * k
        tag, typ = struct.unpack(order + "HH", data[at : at + 4])
        if tag in (256, 257):
            value = width if tag == 256 else height
            if typ == 3:
                out[at + 8 : at + 12] = struct.pack(order + "HH", value, 0)
            else:
                out[at + 8 : at + 12] = struct.pack(order + "I", value)
    return bytes(out)


def _webp_lying(width: int, height: int) -> Optional[bytes]:
    try:
        data = bytearray(_encode(Image.fromarray(_gradient(16, 16)), "WEBP", lossless=True))
    except (OSError, KeyError):
        return None
    # VP8L header: signature 0x2f then 14-bit width-1, 14-bit height-1
    at = data.index(b"VP8L") + 8
    bits = struct.unpack("<I", data[at + 1 : at + 5])[0]
    bits &= ~((1 << 28) - 1)
    bits |= (width - 1) & 0x3FFF | (((height - 1) & 0x3FFF) << 14)
    data[at + 1 : at + 5] = struct.pack("<I", bits)
    return bytes(data)


def _jpeg_lying(width: int, height: int) -> bytes:
    data = bytearray(_encode(Image.fromarray(_gradient(16, 16)), "JPEG", quality=90))
    at = data.index(b"\xff\xc0")  # SOF0: length(2) precision(1) height(2) width(2)
    data[at + 5 : at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def build_corpus(folder: Path) -> dict[str, Case]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cases: dict[str, Case] = {}

    def write(name: str, data: bytes) -> Path:
        path = folder / name
        path.write_bytes(data)
        return path

    def ok(name: str, data: bytes, size: tuple[int, int]) -> None:
        cases[name] = Case(write(name, data), "ok", size=size)

    def bad(name: str, data: bytes, match: str) -> None:
        cases[name] = Case(write(name, data), "error", match)

    rgb = Image.fromarray(_gradient(40, 32))
    # --- decodable oddities: each must load as 8-bit RGB of the stated (W, H) ---
    ok("good.png", _encode(rgb, "PNG"), (40, 32))
    ok("cmyk.jpg", _encode(rgb.convert("CMYK"), "JPEG", quality=95), (40, 32))
    ok("gray16.png", _encode(Image.fromarray(_gradient(40, 32)[..., 0].astype(np.uint16) * 257), "PNG"), (40, 32))
    ok("palette.png", _encode(rgb.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"), (40, 32))
    ok("rgba.png", _encode(rgb.convert("RGBA"), "PNG"), (40, 32))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 on display: stored 40x32, shown 32x40
    ok("exif_rotated.jpg", _encode(rgb, "JPEG", exif=exif.tobytes()), (32, 40))
    ok("one_pixel.png", _encode(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG"), (1, 1))
    ok("tall_1x100000.png", _encode(Image.new("RGB", (1, 100000), (9, 9, 9)), "PNG"), (1, 100000))
    ok("wide_100000x2.png", _encode(Image.new("RGB", (100000, 2), (9, 9, 9)), "PNG"), (100000, 2))
    ok("jpeg_named.png", _encode(rgb, "JPEG"), (40, 32))  # wrong extension: content decides
    ok("bmp.bmp", _encode(rgb, "BMP"), (40, 32))
    ok("tiff.tif", _encode(rgb, "TIFF"), (40, 32))
    ok("gif.gif", _encode(rgb.convert("P"), "GIF"), (40, 32))

    # --- refused, one ImageLoadError naming the file ---
    bad("empty.png", b"", "empty")
    bad("text.png", b"this is not an image\n" * 4, "not a recognised image")
    bad("bomb_40000.png", png_bytes(40000, 40000, 1), "limit")
    bad("bomb_wide.png", png_bytes(2**24, 32, 1, color=0), "limit")
    bad("lying_png_10000.png", png_bytes(10000, 10000, 4), "pixel data ends after row 4 of 10000")
    bad("lying_png_gray.png", png_bytes(3000, 3000, 7, color=0), "pixel data ends after row 7 of 3000")
    good_png = _encode(rgb, "PNG")
    bad("truncated.png", good_png[: len(good_png) // 2], "truncated")
    good_jpg = _encode(Image.fromarray(_gradient(64, 64)), "JPEG", quality=90)
    bad("truncated.jpg", good_jpg[: len(good_jpg) // 2], "truncated")
    bad("header_only.jpg", good_jpg[:200], "truncated")
    bad("lying_jpeg.jpg", _jpeg_lying(8000, 8000), "truncated")
    bad("lying_bmp.bmp", _bmp_header(10000, 10000) + bytes(300), "truncated")
    bad("lying_gif.gif", _gif_lying(5000, 5000), "truncated")
    bad("lying_tiff.tif", _tiff_lying(9000, 9000), "")
    webp = _webp_lying(9000, 9000)
    if webp is not None:
        bad("lying_webp.webp", webp, "")
    bad("lying_png_interlaced.png", _png_interlaced_lying(3000, 3000), "pixel data ends early")
    bad("lying_png16.png", png_bytes(3000, 3000, 5, depth=16), "pixel data ends after row 5 of 3000")
    bad("lying_tiff_deflate.tif", _tiff_lying(3000, 3000, compression="tiff_deflate"), "corrupt or ends early")
    bad("lying_ppm.ppm", b"P6\n3000 3000\n255\n" + bytes(100), "truncated")
    bad("lying_tga.tga", _tga_lying(3000), "truncated")
    good_webp = _encode(Image.fromarray(_gradient(64, 64)), "WEBP") if _has_webp() else None
    if good_webp is not None:
        bad("truncated.webp", good_webp[: len(good_webp) // 3], "truncated")
    prog = bytearray(_encode(Image.fromarray(_gradient(16, 16)), "JPEG", progressive=True))
    at = prog.index(b"\xff\xc2")
    prog[at + 5 : at + 9] = struct.pack(">HH", 3000, 3000)
    bad("lying_progressive.jpg", bytes(prog), "truncated")
    broken = bytearray(good_png)
    broken[29] ^= 0xFF  # IHDR checksum
    bad("bad_checksum.png", bytes(broken), "corrupt png")
    at = good_png.index(b"IDAT") - 4
    ztxt = png_chunk(b"zTXt", b"Comment\0\0" + zlib.compress(bytes(4_000_000), 9))
    bad("metadata_bomb.png", good_png[:at] + ztxt + good_png[at:], "metadata bomb")
    bad("eps_named.png", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", "")

    # --- not regular files ---
    cases["missing.png"] = Case(folder / "missing.png", "error", "does not exist")
    (folder / "directory.png").mkdir(exist_ok=True)
    cases["directory.png"] = Case(folder / "directory.png", "error", "directory")
    loop = folder / "loop.png"
    if not loop.is_symlink():
        os.symlink(loop.name, loop)  # points at itself
    cases["loop.png"] = Case(loop, "error", "symbolic link")
    if hasattr(os, "mkfifo"):
        fifo = folder / "fifo.png"
        if not fifo.exists():
            os.mkfifo(fifo)
        cases["fifo.png"] = Case(fifo, "error", "not a regular file")
    if os.path.exists("/dev/zero"):
        cases["dev_zero"] = Case(Path("/dev/zero"), "error", "not a regular file")
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        locked = write("unreadable.png", _encode(rgb, "PNG"))
        locked.chmod(0)
        cases["unreadable.png"] = Case(locked, "error", "permission denied")
    return cases


# first bytes of the formats the loader tries (and of DIB, whose magic check reads 4 bytes)
_MAGIC_STARTS = (
    b"BM", b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"II*\x00", b"MM\x00*", b"P6\n", b"P5", b"RIFF", b"\x00\x00\x00\x0cjP",
    b"\x28\x00\x00\x00", b"\x59\xa6\x6a\x95", b"\x00\x00\x02\x00", b"\x00\x00\x00 ftypavif", b"%!PS", b"8BPS",
)


def build_cut_files(folder: Path) -> list[Path]:
    """Tiny and cut-short files, each of which the loader must refuse with one ``ImageLoadError`` (or load):

    * every 1-, 2- and 3-byte prefix of the format magics above, plus a few fixed bytes (``\\x00``, ``\\xff``);
    * every well-formed file of the corpus's formats (PNG, JPEG, progressive JPEG, BMP, GIF, TIFF both byte
      orders, PPM, TGA, WebP, JPEG 2000 when the codecs are there) cut after each of its first 64 bytes.

    About 1,000 files of at most 64 bytes; written in a fraction of a second.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []

    def write(name: str, data: bytes) -> None:
        path = folder / name
        path.write_bytes(data)
        paths.append(path)

    tiny = {magic[:n] for magic in _MAGIC_STARTS for n in (1, 2, 3)}
    tiny |= {bytes([b]) * n for b in (0, 0x20, 0xFF) for n in (1, 2, 3)}
    for k, data in enumerate(sorted(tiny)):
        write(f"tiny_{len(data)}b_{k}.img", data)

    rgb = Image.fromarray(_gradient(24, 16, seed=3))
    full = {
        "png": _encode(rgb, "PNG"),
        "jpg": _encode(rgb, "JPEG", quality=90),
        "progressive.jpg": _encode(rgb, "JPEG", progressive=True),
        "bmp": _encode(rgb, "BMP"),
        "gif": _encode(rgb.convert("P"), "GIF"),
        "tif": _encode(rgb, "TIFF"),
        "be.tif": _tiff_big_endian(rgb),
        "ppm": _encode(rgb, "PPM"),
        "tga": _encode(rgb, "TGA"),
        "rle.tga": _encode(rgb, "TGA", compression="tga_rle"),
    }
    for fmt, kwargs in (("WEBP", {"lossless": True}), ("JPEG2000", {})):
        try:
            full[fmt.lower()] = _encode(rgb, fmt, **kwargs)
        except (OSError, KeyError):  # codec not built into this Pillow
            pass
    for ext, data in full.items():
        for cut in range(1, min(64, len(data) - 1) + 1):
            write(f"cut_{cut:02d}_of.{ext}", data[:cut])
    return paths


def _tiff_big_endian(image: Image.Image) -> bytes:
    """A minimal uncompressed big-endian (``MM``) RGB TIFF, written by hand (Pillow writes little-endian)."""
    width, height = image.size
    pixels = image.tobytes()
    entries = [(256, 3, 1, width), (257, 3, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 2),
               (273, 4, 1, 0), (277, 3, 1, 3), (278, 3, 1, height), (279, 4, 1, len(pixels))]
    ifd_at = 8
    data_at = ifd_at + 2 + 12 * len(entries) + 4
    out = bytearray(b"MM\x00*" + struct.pack(">I", ifd_at) + struct.pack(">H", len(entries)))
    for tag, typ, count, value in entries:
        value = data_at if tag == 273 else value
        packed = struct.pack(">HH", value, 0) if typ == 3 else struct.pack(">I", value)
        out += struct.pack(">HHI", tag, typ, count) + packed
    return bytes(out + struct.pack(">I", 0) + pixels)
