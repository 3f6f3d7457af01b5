"""Regenerate the example pair in this folder (requires scikit-image).

reference.png: a 192x256 crop of scikit-image's ``astronaut`` sample (NASA photograph, public domain).
distorted.png: the reference bicubically downscaled x4, upscaled back, and JPEG-compressed at quality 60.
"""

import io
from pathlib import Path

import skimage.data
from PIL import Image

here = Path(__file__).resolve().parent
ref = Image.fromarray(skimage.data.astronaut()[40:232, 150:406])
dis = ref.resize((64, 48), Image.BICUBIC).resize((256, 192), Image.BICUBIC)
buf = io.BytesIO()
dis.save(buf, "JPEG", quality=60)
ref.save(here / "reference.png", optimize=True)
Image.open(buf).convert("RGB").save(here / "distorted.png", optimize=True)
