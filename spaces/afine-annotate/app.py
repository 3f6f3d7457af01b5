"""DiffIQA annotation Space: which of two images looks better? Writes official DiffIQA label JSONs (no model).

Settings from the environment: AFINE_ANNOTATE_DATA (folder with images/{variant}/ and images/Original/;
default /data/afine-annotate when the Space has persistent storage at /data, else ./data),
AFINE_ANNOTATE_LABELS (default DATA/labels), AFINE_ANNOTATE_SEED, GRADIO_SERVER_NAME/PORT. See docs/spaces.md.
"""

from afine_apps.annotate import build_annotate, store_from_env
from afine_apps.launching import serve

demo = build_annotate(store_from_env())

if __name__ == "__main__":
    serve(demo)
