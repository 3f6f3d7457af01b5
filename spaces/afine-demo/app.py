"""A-FINE demo Space: score a pair, A vs B, rank a gallery, naturalness only (every number: lower is better).

Settings from the environment: AFINE_MODEL (converted dir, Hub repo id or afine.pth; default weights
otherwise), AFINE_DEVICE, AFINE_DTYPE, AFINE_BATCH_SIZE, AFINE_MAX_IMAGE_PIXELS (uploads refused above it, before
decoding; default sized to the hardware), AFINE_MAX_GALLERY_IMAGES, AFINE_CONCURRENCY (model runs at once across
all endpoints), AFINE_QUEUE_SIZE, AFINE_CACHE_TTL, GRADIO_SERVER_NAME/PORT. See docs/spaces.md.
"""

try:  # Hugging Face's ZeroGPU package must be imported before torch when it is there
    import spaces  # noqa: F401
except ImportError:
    pass

from pathlib import Path

from afine_apps.demo import build_demo, example_pairs
from afine_apps.launching import scorer_from_env, serve

HERE = Path(__file__).resolve().parent

demo = build_demo(scorer_from_env(), examples=example_pairs(HERE))

if __name__ == "__main__":
    serve(demo)
