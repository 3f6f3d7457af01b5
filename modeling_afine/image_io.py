"""The one image loader of the project.

Every part (model, processor, CLI, dataset builders, training, apps) reads user and dataset images
through :func:`load_image` (or :func:`probe_image` for the size alone), so the rules below hold everywhere:

* the result is an 8-bit RGB ``PIL.Image.Image`` (mode ``"RGB"``);
* EXIF orientation is applied (as OpenCV's ``imread`` did in the official pipeline);
* grayscale is replicated to three channels, alpha is dropped (not composited), palettes expanded;
* 16-bit images are reduced to 8 bits by keeping the high byte (``v >> 8``), which is what
  ``cv2.imread(path, cv2.IMREAD_COLOR)`` does in the official code; Pillow's own ``convert`` would
  saturate them at 255 instead;
* only regular files are read: a FIFO, socket, device, directory, empty file or symlink loop is refused
  before anything is read from it (a FIFO would otherwise block forever);
* the pixel count in the header is checked against the project's limit (:data:`DEFAULT_MAX_PIXELS`,
  ``2**28``; the ``AFINE_MAX_IMAGE_PIXELS`` environment variable, read at every call, or the
  ``max_pixels`` argument change it) *before* any pixel is decoded. Pillow's own decompression-bomb check
  never decides: headers are parsed with Pillow's format plugins directly, without ``Image.open``'s check,
  so an image under our limit loads without Pillow's warning or error, whatever Pillow's limit;
* truncated pixel data is refused: files that end early, PNGs whose (complete) compressed stream holds
  fewer rows than the header claims ("pixel data ends after row 4 of 10000"), JPEGs too small to hold the
  blocks their header claims. ``allow_truncated=True`` or ``AFINE_ALLOW_TRUNCATED_IMAGES=1`` opts in to
  loading such files anyway (missing pixels are filled by the decoder, usually black or gray). Limit: a
  JPEG whose data stops early *with* an end-of-image marker, but holds enough bytes for the claimed
  blocks, is padded with gray by libjpeg (as OpenCV's ``imread`` does) and not detected;
* only common raster formats are accepted (:data:`SUPPORTED_FORMATS`), whatever the file extension says;
  e.g. EPS (which would run Ghostscript), PSD or ICO are refused;
* every failure raises :class:`ImageLoadError` naming the file and the problem; sizes are written
  ``500x333 (WxH)``, width first, everywhere in the project.

Thread safety: loading is safe from many threads. The rare decodes that need one of Pillow's process-wide
switches (images above Pillow's own bomb threshold, which some plugins re-check while decoding tiles or
frames; GIF headers, whose first frame may grow the canvas; truncated files the caller opted in to) run one
at a time while no other decode of this module runs, and restore the switches afterwards. Other code in the
same process that uses Pillow directly during such a decode sees the switches flipped for that moment.

This module imports only Pillow and numpy so that data tools can use it cheaply.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
import struct
import threading
import zlib
from typing import IO, Iterator, Optional, Union

import numpy as np
from PIL import Image, ImageFile, ImageOps

__all__ = [
    "ImageLoadError",
    "load_image",
    "load_image_array",
    "probe_image",
    "to_rgb8",
    "format_size",
    "max_image_pixels",
    "DEFAULT_MAX_PIXELS",
    "MAX_PIXELS_ENV",
    "ALLOW_TRUNCATED_ENV",
    "SUPPORTED_FORMATS",
]

#: Default pixel limit (width * height): 2**28, about 16k x 16k.
DEFAULT_MAX_PIXELS = 2**28
#: Environment variable that overrides :data:`DEFAULT_MAX_PIXELS` (read at every call).
MAX_PIXELS_ENV = "AFINE_MAX_IMAGE_PIXELS"
#: Environment variable that, set to 1/true/yes, loads truncated images instead of refusing them.
ALLOW_TRUNCATED_ENV = "AFINE_ALLOW_TRUNCATED_IMAGES"
#: Pillow format names accepted (common raster formats). Tried in this order.
SUPPORTED_FORMATS = ("PNG", "JPEG", "BMP", "DIB", "TIFF", "WEBP", "GIF", "PPM", "JPEG2000", "AVIF", "SUN", "TGA")
# formats whose plugin may call Pillow's bomb check while *opening* (GIF: a frame may grow the canvas)
_SELF_CHECKING = {"GIF"}
_PLUGINS = {
    "PNG": "PngImagePlugin",
    "JPEG": "JpegImagePlugin",
    "BMP": "BmpImagePlugin",
    "DIB": "BmpImagePlugin",
    "TIFF": "TiffImagePlugin",
    "WEBP": "WebPImagePlugin",
    "GIF": "GifImagePlugin",
    "PPM": "PpmImagePlugin",
    "JPEG2000": "Jpeg2KImagePlugin",
    "AVIF": "AvifImagePlugin",
    "SUN": "SunImagePlugin",
    "TGA": "TgaImagePlugin",
}
_CHUNK = 1 << 20

PathLike = Union[str, os.PathLike]


class ImageLoadError(ValueError):
    """An image could not be read. The message names the file and the problem."""


def format_size(width: int, height: int) -> str:
    """The project's one way to print an image size: ``"500x333 (WxH)"`` (width first, labelled)."""
    return f"{width}x{height} (WxH)"


def max_image_pixels(max_pixels: Optional[int] = None) -> int:
    """The pixel limit in force: ``max_pixels`` if given, else ``$AFINE_MAX_IMAGE_PIXELS``, else 2**28."""
    if max_pixels is not None:
        return int(max_pixels)
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(float(raw)) if "e" in raw.lower() else int(raw, 0)
    except ValueError:
        raise ImageLoadError(f"{MAX_PIXELS_ENV}={raw!r} is not a whole number of pixels") from None
    if value <= 0:
        raise ImageLoadError(f"{MAX_PIXELS_ENV}={raw!r} must be a positive number of pixels")
    return value


def _allow_truncated(allow: Optional[bool]) -> bool:
    if allow is not None:
        return bool(allow)
    return os.environ.get(ALLOW_TRUNCATED_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _describe(source: object) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source) if not isinstance(os.fspath(source), bytes) else os.fsdecode(source)
    name = getattr(source, "filename", None)
    return str(name) if name else f"<{type(source).__name__}>"


# ---------------------------------------------------------------------------------------------- locking


class _SharedExclusiveLock:
    """Many shared holders, or one exclusive holder (for decodes that flip Pillow's global switches).

    A waiting exclusive holder blocks new shared holders, so it cannot be starved."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting = 0

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive or self._waiting:
                self._cond.wait()
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            try:
                while self._exclusive or self._shared:
                    self._cond.wait()
            finally:
                self._waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


_LOCK = _SharedExclusiveLock()
_PLUGIN_LOCK = threading.Lock()
_plugins_ready = False


@contextlib.contextmanager
def _pillow_switches(
    *, size: Optional[tuple[int, int]] = None, bomb_check_off: bool = False, truncated_ok: bool = False
) -> Iterator[None]:
    """Run a decode; flip Pillow's process-wide switches only while holding the exclusive lock.

    Pillow's check is switched off when ``bomb_check_off`` or when an image of ``size`` could trip it. That is
    decided while holding the lock, so no other decode of this module has the switch flipped at that moment.
    """
    if not truncated_ok and not bomb_check_off:
        with _LOCK.shared():
            if size is None or not _over_pillow_limit(size):
                yield
                return
        bomb_check_off = True
    with _LOCK.exclusive():
        old_pixels, old_truncated = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
        if bomb_check_off or (size is not None and _over_pillow_limit(size)):
            Image.MAX_IMAGE_PIXELS = None  # our own limit was checked on the header; None: no error, no warning
        if truncated_ok:
            ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = old_pixels, old_truncated


def _over_pillow_limit(size: tuple[int, int]) -> bool:
    """Whether Pillow's own check could fire while decoding (some plugins call it on tiles, frames and
    disposal areas, all within the image): only then is the decode run with Pillow's check switched off."""
    pillow_limit = Image.MAX_IMAGE_PIXELS
    return pillow_limit is not None and max(1, size[0]) * max(1, size[1]) > pillow_limit


def _ensure_plugins() -> None:
    global _plugins_ready
    if _plugins_ready:
        return
    with _PLUGIN_LOCK:
        if not _plugins_ready:
            import importlib

            for module in set(_PLUGINS.values()):
                try:
                    importlib.import_module(f"PIL.{module}")
                except ImportError:  # an optional codec (AVIF, WebP, JPEG 2000) not built into this Pillow
                    pass
            _plugins_ready = True


# ------------------------------------------------------------------------------------------ opening


def _open_regular_file(path: PathLike, name: str) -> IO[bytes]:
    """Open ``path`` for reading if it is a non-empty regular file; never blocks on a FIFO."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise ImageLoadError(f"{name}: broken symbolic link (its target does not exist)") from None
        raise ImageLoadError(f"{name}: file does not exist") from None
    except PermissionError:
        raise ImageLoadError(f"{name}: permission denied (cannot look up the file)") from None
    except ValueError as exc:  # e.g. an embedded NUL character
        raise ImageLoadError(f"{name!r}: invalid file name ({exc})") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ImageLoadError(f"{name}: symbolic link loop (the link points back to itself)") from None
        if exc.errno == errno.ENAMETOOLONG:
            raise ImageLoadError(f"{name}: file name too long") from None
        raise ImageLoadError(f"{name}: cannot access: {exc.strerror or exc}") from None
    _require_regular(st, name)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)  # O_NONBLOCK: a FIFO swapped in after the stat still cannot block us
    except PermissionError:
        raise ImageLoadError(f"{name}: permission denied") from None
    except IsADirectoryError:
        raise ImageLoadError(f"{name}: is a directory, not an image file") from None
    except OSError as exc:
        raise ImageLoadError(f"{name}: cannot open: {exc.strerror or exc}") from None
    try:
        _require_regular(os.fstat(fd), name)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def _require_regular(st: os.stat_result, name: str) -> None:
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        raise ImageLoadError(f"{name}: is a directory, not an image file")
    if not stat.S_ISREG(mode):
        kind = (
            "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
            else "a socket" if stat.S_ISSOCK(mode)
            else "a character device" if stat.S_ISCHR(mode)
            else "a block device" if stat.S_ISBLK(mode)
            else "a special file"
        )
        raise ImageLoadError(f"{name}: not a regular file ({kind}); only image files can be read")
    if st.st_size == 0:
        raise ImageLoadError(f"{name}: empty file (0 bytes)")


def _identify(fp: IO[bytes], name: str) -> ImageFile.ImageFile:
    """Parse the header with Pillow's format plugins, without ``Image.open``'s bomb check."""
    _ensure_plugins()
    fp.seek(0)
    prefix = fp.read(16)
    if not prefix:
        raise ImageLoadError(f"{name}: empty file (0 bytes)")
    failure: Optional[tuple[str, BaseException]] = None
    for fmt in SUPPORTED_FORMATS:
        entry = Image.OPEN.get(fmt)
        if entry is None:
            continue
        factory, accept = entry
        if accept is not None:
            try:
                verdict = accept(prefix)
            except Exception:  # noqa: BLE001 - a plugin's magic check on a few bytes (DIB's reads 4): not this format
                continue
            if not verdict or isinstance(verdict, str):
                continue
        fp.seek(0)
        try:
            if fmt in _SELF_CHECKING:
                with _pillow_switches(bomb_check_off=True):
                    return factory(fp, "")
            return factory(fp, "")
        except (SyntaxError, IndexError, TypeError, struct.error) as exc:
            if accept is not None and failure is None:
                failure = (fmt, exc)  # the magic bytes matched: the best explanation if nothing else fits
            continue  # not this format: try the next, as Image.open does
        except EOFError:
            if accept is None:
                continue  # a format without magic bytes (TGA) only gets a try
            raise ImageLoadError(f"{name}: file is truncated (it ends inside the {fmt} header)") from None
        except Image.DecompressionBombError as exc:  # not expected: open-time checks run with Pillow's off
            raise ImageLoadError(f"{name}: refused as a decompression bomb while reading the header ({exc})") from None
        except (OSError, ValueError) as exc:
            if accept is None:
                continue
            if "truncated" in str(exc).lower() or _container_truncated(fp, fmt):
                raise ImageLoadError(f"{name}: file is truncated (it ends inside the {fmt} header)") from None
            raise ImageLoadError(f"{name}: cannot read the {fmt} header: {_reason(exc)}") from None
        except MemoryError:
            raise ImageLoadError(f"{name}: out of memory reading the {fmt} header") from None
        except Exception as exc:  # noqa: BLE001 - any other failure of a format plugin is a broken file, not a crash
            if accept is None:
                continue
            raise ImageLoadError(f"{name}: corrupt {fmt} file: {_reason(exc)}") from None
    if failure is not None:
        fmt, exc = failure
        why = "malformed or cut-short header" if isinstance(exc, (IndexError, struct.error)) else _reason(exc)
        raise ImageLoadError(f"{name}: corrupt {fmt} file: {why}")
    other = _other_format(fp)
    if other:
        raise ImageLoadError(
            f"{name}: {other} files are not supported; use one of {', '.join(_format_names())}"
        )
    raise ImageLoadError(f"{name}: not a recognised image format (corrupt, truncated, or not an image)")


def _format_names() -> list[str]:
    return [f for f in SUPPORTED_FORMATS if f in Image.OPEN and f != "DIB"]


def _other_format(fp: IO[bytes]) -> Optional[str]:
    """Name a format Pillow knows but we refuse (e.g. EPS), for a clearer message."""
    fp.seek(0)
    prefix = fp.read(16)
    if prefix.startswith(b"%!PS") or prefix.startswith(b"\xc5\xd0\xd3\xc6"):
        return "PostScript/EPS"
    if prefix.startswith(b"\x00\x00\x01\x00") or prefix.startswith(b"\x00\x00\x02\x00"):
        return "ICO/CUR"
    if prefix.startswith(b"8BPS"):
        return "Photoshop (PSD)"
    if prefix.startswith(b"icns"):
        return "ICNS"
    return None


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if "MAX_TEXT_CHUNK" in text:
        text = "a compressed metadata chunk (text or ICC profile) expands to more than 1 MB (a metadata bomb)"
    return text


def _png_chunks(fp: IO[bytes]) -> Iterator[tuple[bytes, int]]:
    """The chunks of a PNG as ``(type, data length)``, from the first after the signature to a cut-off header.

    At each yield ``fp`` stands at the chunk's data; the caller may read some of it, and the next step seeks past
    the rest (and the CRC) from the data's start, so only headers are read unless the caller reads data.
    """
    fp.seek(8)
    while True:
        head = fp.read(8)
        if len(head) < 8:
            return
        length, kind = struct.unpack(">I4s", head)
        start = fp.tell()
        yield kind, length
        fp.seek(start + length + 4)


def _png_metadata_after_pixels(fp: IO[bytes]) -> bool:
    """True when a PNG has chunks other than IDAT/IEND after its first IDAT (or its chunk list is unreadable).

    Reads only the 8-byte chunk headers; the file position is restored.
    """
    position = fp.tell()
    try:
        seen_idat = False
        for kind, _ in _png_chunks(fp):
            if kind == b"IEND":
                return False
            if kind == b"IDAT":
                seen_idat = True
            elif seen_idat:
                return True
        return True
    finally:
        fp.seek(position)


def _oriented(image: ImageFile.ImageFile, fp: Optional[IO[bytes]] = None) -> tuple[int, int]:
    """(W, H) as displayed: EXIF orientations 5-8 swap the stored sides."""
    width, height = image.size
    try:
        if image.format == "PNG" and fp is not None and not _png_metadata_after_pixels(fp):
            # Pillow's PNG getexif() decodes every pixel to reach metadata stored after them. With no chunk
            # there, the metadata read with the header is all there is: the same answer, without decoding.
            exif = Image.Image.getexif(image)
        else:
            exif = image.getexif()
        orientation = exif.get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block is ignored, as exif_transpose does
        orientation = 1
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _check_pixels(width: int, height: int, limit: int, name: str) -> None:
    if width <= 0 or height <= 0:
        raise ImageLoadError(f"{name}: image has no pixels ({format_size(width, height)})")
    if width * height > limit:
        raise ImageLoadError(
            f"{name}: image is {format_size(width, height)} = {width * height:,} pixels, which exceeds the limit of "
            f"{limit:,} pixels (a decompression bomb, or a huge image): set {MAX_PIXELS_ENV} "
            "(or max_pixels=) to a larger number to read it"
        )


# --------------------------------------------------------------------------------- truncation checks


def _png_rows_check(fp: IO[bytes], image: ImageFile.ImageFile, name: str) -> None:
    """Refuse a PNG whose compressed pixel stream ends before the last row, without decoding pixels.

    Inflates the IDAT stream in bounded chunks and only counts bytes, so memory stays small even when the
    header lies; a complete zlib stream that holds 4 rows of a 10000-row image is caught here.
    """
    fp.seek(8)
    header = fp.read(25)
    if len(header) < 25 or header[4:8] != b"IHDR":
        return
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", header[8:21])
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(color)
    if channels is None:
        return
    bits = channels * depth

    def row_bytes(columns: int) -> int:
        return 1 + (columns * bits + 7) // 8

    if interlace:
        passes = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
        needed = 0
        for x0, y0, dx, dy in passes:
            cols = (width - x0 + dx - 1) // dx if width > x0 else 0
            rows = (height - y0 + dy - 1) // dy if height > y0 else 0
            if cols and rows:
                needed += rows * row_bytes(cols)
    else:
        needed = height * row_bytes(width)

    inflater = zlib.decompressobj()
    produced = 0
    seen_idat = False
    for kind, length in _png_chunks(fp):  # a cut-off chunk header ends it: Pillow reports that file itself
        if produced >= needed or inflater.eof:
            break
        if kind != b"IDAT":
            if seen_idat or kind == b"IEND":
                break
            continue
        seen_idat = True
        remaining = length
        while remaining and produced < needed and not inflater.eof:
            data = fp.read(min(remaining, _CHUNK))
            if not data:
                break
            remaining -= len(data)
            try:
                while data and produced < needed:
                    out = inflater.decompress(data, _CHUNK)
                    produced += len(out)
                    data = inflater.unconsumed_tail
            except zlib.error:
                return  # corrupt stream: Pillow's decoder reports it
    if produced >= needed:
        return
    if interlace:
        raise ImageLoadError(
            f"{name}: truncated: pixel data ends early ({produced:,} of {needed:,} bytes of the interlaced "
            f"{format_size(width, height)} image); set {ALLOW_TRUNCATED_ENV}=1 to load it anyway"
        )
    rows = produced // row_bytes(width)
    raise ImageLoadError(
        f"{name}: truncated: pixel data ends after row {rows} of {height} "
        f"({format_size(width, height)} claimed); set {ALLOW_TRUNCATED_ENV}=1 to load it anyway"
    )


def _jpeg_size_check(fp: IO[bytes], image: ImageFile.ImageFile, name: str, file_size: int) -> None:
    """Refuse a JPEG too small to hold the 8x8 blocks its header claims (libjpeg pads such files silently).

    Every block of a Huffman-coded baseline JPEG costs at least 2 bits (a DC code and an end-of-block code),
    and at least 1 bit in a progressive one; only the full-resolution component is counted.
    """
    fp.seek(2)
    sof = None
    while True:
        marker = fp.read(2)
        if len(marker) < 2 or marker[0] != 0xFF:
            return
        kind = marker[1]
        if kind == 0xFF:
            fp.seek(-1, io.SEEK_CUR)
            continue
        if kind == 0xD8 or 0xD0 <= kind <= 0xD7 or kind == 0x01:
            continue
        raw = fp.read(2)
        if len(raw) < 2:
            return
        (length,) = struct.unpack(">H", raw)
        if kind in (0xC0, 0xC1, 0xC2):
            sof = kind
        if kind == 0xDA:
            break
        fp.seek(length - 2, io.SEEK_CUR)
    if sof is None:
        return
    available = file_size - fp.tell()
    width, height = image.size
    blocks = ((width + 7) // 8) * ((height + 7) // 8)
    needed = (blocks * (1 if sof == 0xC2 else 2) + 7) // 8
    if available < needed:
        raise ImageLoadError(
            f"{name}: truncated: the header claims {format_size(width, height)} but the file holds only "
            f"{max(available, 0):,} bytes of pixel data (at least {needed:,} needed); set "
            f"{ALLOW_TRUNCATED_ENV}=1 to load it anyway"
        )


def _file_size(fp: IO[bytes]) -> int:
    try:
        return os.fstat(fp.fileno()).st_size
    except (OSError, AttributeError, io.UnsupportedOperation):
        pos = fp.tell()
        end = fp.seek(0, io.SEEK_END)
        fp.seek(pos)
        return end


def _decode_error(exc: BaseException, name: str) -> ImageLoadError:
    reason = _reason(exc)
    low = reason.lower()
    if "truncated" in low or "not enough data" in low or "premature" in low or "buffer is not large enough" in low:
        return ImageLoadError(
            f"{name}: truncated: the file ends before all pixel data ({reason}); set {ALLOW_TRUNCATED_ENV}=1 "
            "to load it anyway"
        )
    if any(k in low for k in ("decoder error", "broken data stream", "decoding error", "failed to read next frame")):
        return ImageLoadError(f"{name}: cannot decode image: its pixel data is corrupt or ends early ({reason})")
    return ImageLoadError(f"{name}: cannot decode image: {reason}")


def _container_truncated(fp: IO[bytes], fmt: str) -> bool:
    """Whether a RIFF (WebP) container declares more bytes than the file holds."""
    if fmt != "WEBP":
        return False
    fp.seek(0)
    head = fp.read(12)
    if len(head) < 12 or head[:4] != b"RIFF":
        return False
    (declared,) = struct.unpack("<I", head[4:8])
    return declared + 8 > _file_size(fp)


# -------------------------------------------------------------------------------------- public API


def to_rgb8(image: Image.Image, name: str = "<image>") -> Image.Image:
    """Convert an already opened PIL image to 8-bit RGB with the project's rules (see module doc)."""
    mode = image.mode
    if mode == "RGB":
        return image.copy() if image.readonly else image
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit (or 32-bit integer) grayscale: keep the high byte of 16-bit values like OpenCV.
        arr = np.asarray(image, dtype=np.int64)
        if mode == "I" and arr.max(initial=0) <= 255:
            arr8 = arr.clip(0, 255).astype(np.uint8)  # an 8-bit image stored as mode I
        else:
            arr8 = (arr.clip(0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(np.repeat(arr8[..., None], 3, axis=2), mode="RGB")
    if mode == "F":
        arr = np.asarray(image, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise ImageLoadError(f"{name}: floating-point image contains NaN or infinity")
        scale = 255.0 if arr.max(initial=0.0) <= 1.0 else 1.0
        arr8 = np.clip(np.round(arr * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(arr8[..., None], 3, axis=2), mode="RGB")
    if mode in ("RGBA", "RGBX", "RGBa", "LA", "La", "PA", "P", "L", "1", "CMYK", "YCbCr", "LAB", "HSV"):
        # RGBA -> RGB drops alpha without compositing, as OpenCV's IMREAD_COLOR does.
        return image.convert("RGB")
    if mode.startswith("I;16") or mode.startswith("BGR"):
        return to_rgb8(image.convert("I"), name)
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageLoadError(f"{name}: unsupported image mode {mode!r}: {exc}") from exc


@contextlib.contextmanager
def _opened(source: Union[PathLike, bytes, bytearray], name: str) -> Iterator[tuple[IO[bytes], ImageFile.ImageFile]]:
    """The open file and its identified header; any failure inside (a format plugin's ``struct.error``,
    ``KeyError``, ...) leaves as one :class:`ImageLoadError` naming the file."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageLoadError(f"{name}: empty data (0 bytes)")
        fp: IO[bytes] = io.BytesIO(bytes(source))
    else:
        fp = _open_regular_file(source, name)
    with fp:  # closing the file, not the image: a loaded image keeps its pixels
        try:
            yield fp, _identify(fp, name)
        except ImageLoadError:
            raise
        except MemoryError:
            raise ImageLoadError(f"{name}: out of memory reading the image") from None
        except Exception as exc:  # noqa: BLE001 - a plugin bug on a hostile file is that file's problem
            raise ImageLoadError(f"{name}: cannot read the image (corrupt or cut short): {_reason(exc)}") from None


def probe_image(source: Union[PathLike, bytes], *, max_pixels: Optional[int] = None) -> tuple[int, int]:
    """``(height, width)`` of an image as :func:`load_image` would return it (EXIF orientation applied),
    from its header only. Applies the same file and pixel-limit checks and raises the same
    :class:`ImageLoadError`; truncated pixel data is only detected by :func:`load_image`.
    """
    limit = max_image_pixels(max_pixels)
    name = _describe(source)
    with _opened(source, name) as (fp, image):
        _check_pixels(*image.size, limit, name)
        width, height = _oriented(image, fp)
    return height, width


def load_image(
    source: Union[PathLike, bytes, Image.Image],
    *,
    max_pixels: Optional[int] = None,
    allow_truncated: Optional[bool] = None,
) -> Image.Image:
    """Load ``source`` (a path, encoded bytes or a PIL image) as an 8-bit RGB PIL image.

    Args:
        source: file path, raw encoded bytes, or an open ``PIL.Image.Image``.
        max_pixels: refuse images with more pixels than this (default: ``$AFINE_MAX_IMAGE_PIXELS`` or 2**28).
        allow_truncated: load files whose pixel data ends early (missing pixels filled by the decoder)
            instead of refusing them (default: ``$AFINE_ALLOW_TRUNCATED_IMAGES``, off).

    Returns:
        A fully decoded ``PIL.Image.Image`` of mode ``"RGB"``, EXIF orientation applied.

    Raises:
        ImageLoadError: missing, non-regular, unreadable, unsupported, truncated, empty or oversized images;
            the message names the file.
    """
    limit = max_image_pixels(max_pixels)
    truncated_ok = _allow_truncated(allow_truncated)
    name = _describe(source)
    if isinstance(source, Image.Image):
        _check_pixels(*source.size, limit, name)
        try:
            with _pillow_switches(size=source.size, truncated_ok=truncated_ok):
                source.load()
                image = ImageOps.exif_transpose(source) or source
        except Exception as exc:  # noqa: BLE001 - every decoder failure becomes one ImageLoadError naming the file
            raise _decode_error(exc, name) from exc
        return to_rgb8(image, name)
    with _opened(source, name) as (fp, image):
        _check_pixels(*image.size, limit, name)
        fmt = image.format
        if not truncated_ok:
            if fmt == "PNG":
                _png_rows_check(fp, image, name)
            elif fmt in ("JPEG", "MPO"):
                _jpeg_size_check(fp, image, name, _file_size(fp))
        try:
            with _pillow_switches(size=image.size, truncated_ok=truncated_ok):
                image.load()
                loaded = ImageOps.exif_transpose(image) or image
        except MemoryError as exc:
            raise ImageLoadError(f"{name}: out of memory decoding a {format_size(*image.size)} image") from exc
        except Exception as exc:  # noqa: BLE001 - every decoder failure becomes one ImageLoadError naming the file
            if _container_truncated(fp, fmt):
                raise ImageLoadError(
                    f"{name}: truncated: the file ends before all pixel data ({_reason(exc)}); set "
                    f"{ALLOW_TRUNCATED_ENV}=1 to load it anyway"
                ) from exc
            raise _decode_error(exc, name) from exc
        return to_rgb8(loaded, name)


def load_image_array(
    source: Union[PathLike, bytes, Image.Image],
    *,
    max_pixels: Optional[int] = None,
    allow_truncated: Optional[bool] = None,
) -> np.ndarray:
    """Like :func:`load_image` but returns a ``uint8`` numpy array of shape ``(H, W, 3)``, RGB."""
    return np.asarray(load_image(source, max_pixels=max_pixels, allow_truncated=allow_truncated), dtype=np.uint8)
