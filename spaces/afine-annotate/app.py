"""DiffIQA annotation Space: which of two images looks better? Writes official DiffIQA label JSONs (no model).

Settings from the environment: AFINE_ANNOTATE_DATA (folder with images/{variant}/ and images/Original/;
default /data/afine-annotate when the Space has persistent storage at /data, else ./data),
AFINE_ANNOTATE_LABELS (default DATA/labels), AFINE_ANNOTATE_SEED, GRADIO_SERVER_NAME/PORT.
Who annotates: on a Space, Hugging Face sign-in (hf_oauth: true in README.md), limited to AFINE_ANNOTATORS
(HF usernames, comma-separated) when set; locally AFINE_ANNOTATORS=alice,bob, optionally with
AFINE_ANNOTATE_AUTH_FILE (name:password lines); with neither, one local annotator. See docs/spaces.md.
"""

from afine_apps.annotate import build_annotate, identity_from_env, store_from_env
from afine_apps.launching import serve

identity = identity_from_env()
demo = build_annotate(store_from_env(), identity)

if __name__ == "__main__":
    serve(demo, auth=identity.auth)
