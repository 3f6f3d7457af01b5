"""Convert the official A-FINE checkpoint to a transformers model directory.

Inputs (spec/afine.md §1.9):

* the merged ``afine.pth``: a dict with exactly six entries ``finetuned_clip``, ``natural``, ``fidelity``,
  ``natural_scale``, ``fidelity_scale``, ``adapter``;
* or a folder with the per-stage files of the official training code: ``clip_model.pth``,
  ``net_qhead.pth``, ``net_dhead.pth``, ``net_scale_nr.pth``, ``net_scale_fr.pth``, ``net_finalscore.pth``
  (BasicSR files may wrap their tensors in ``params``/``params_ema`` and prefix ``module.``).

Files are read with ``torch.load(..., weights_only=True)``; a pickle that needs arbitrary code is refused.
The OpenAI CLIP visual keys are mapped to transformers' ``CLIPVisionModel`` names (the fused attention
projection is split into q/k/v); the text tower and ``visual.proj`` (unused by A-FINE) are dropped. Any
missing, unexpected or mis-shaped key aborts the conversion with the full list.

Output: ``config.json``, ``model.safetensors``, ``preprocessor_config.json`` and the code files with an
``auto_map``, so that ``AutoModel.from_pretrained(out, trust_remote_code=True)`` works without this package, plus
the pipeline module named in ``custom_pipelines``, so that ``transformers.pipeline("image-quality-assessment",
model=out, trust_remote_code=True)`` does too.
"""

from __future__ import annotations

import argparse
import pickle
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional

if TYPE_CHECKING:  # torch and transformers are imported on use, so 'afine convert --help' starts instantly
    import torch

    from .configuration_afine import AfineConfig

OFFICIAL_KEYS = ("finetuned_clip", "natural", "fidelity", "natural_scale", "fidelity_scale", "adapter")
STAGE_FILES = {
    "finetuned_clip": "clip_model.pth",
    "natural": "net_qhead.pth",
    "fidelity": "net_dhead.pth",
    "natural_scale": "net_scale_nr.pth",
    "fidelity_scale": "net_scale_fr.pth",
    "adapter": "net_finalscore.pth",
}
# Keys of the OpenAI CLIP text tower (and other non-visual entries) that ride along in finetuned_clip.
_TEXT_KEY = re.compile(
    r"^(positional_embedding|text_projection|logit_scale|token_embedding\.weight|ln_final\.(weight|bias)|"
    r"transformer\.resblocks\.\d+\..+)$"
)
_UNUSED_VISUAL = {"visual.proj"}

__all__ = [
    "ConversionError",
    "load_official_state_dict",
    "official_to_hf_state_dict",
    "config_from_official",
    "convert_afine_checkpoint",
    "main",
]


class ConversionError(ValueError):
    """The checkpoint does not have the official layout; the message lists every problem."""


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"BM", "a BMP image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"%PDF", "a PDF document"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"\x7fELF", "an executable"),
)


def _one_line(text: str) -> str:
    return " ".join(_ANSI.sub("", text).split())


def _sniff(path: Path) -> None:
    """Refuse, with a one-line reason, anything that cannot be a ``torch.save`` file, before unpickling."""
    import stat

    try:
        st = path.stat()
    except FileNotFoundError:
        raise ConversionError(f"{path}: file does not exist") from None
    except OSError as exc:
        raise ConversionError(f"{path}: cannot access: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ConversionError(f"{path}: is a directory without the per-stage files {', '.join(STAGE_FILES.values())}")
    if not stat.S_ISREG(st.st_mode):
        raise ConversionError(f"{path}: not a regular file, so not a PyTorch checkpoint")
    if st.st_size == 0:
        raise ConversionError(f"{path}: empty file (0 bytes), not a PyTorch checkpoint")
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise ConversionError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80\x02"):
        return  # torch's zip format, or its legacy pickle format
    if len(head) >= 9 and head[8:9] == b"{":
        raise ConversionError(
            f"{path}: this is a safetensors file, not the official PyTorch checkpoint afine.pth; a folder of "
            "converted weights can be used directly (--model FOLDER)"
        )
    kind = next((what for magic, what in _MAGIC if head.startswith(magic)), None)
    if kind is None:
        kind = "text" if all(32 <= b < 127 or b in (9, 10, 13) for b in head) else "not a torch.save file"
    raise ConversionError(f"{path}: not a PyTorch checkpoint ({kind}); expected the official afine.pth")


def _safe_load(path: Path) -> Any:
    """``torch.load(weights_only=True)`` with our own one-line errors; nothing in the file is ever executed."""
    import torch

    path = Path(path)
    _sniff(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = _one_line(str(exc))
        found = re.search(r"GLOBAL ([\w.]+)", text)
        if found:
            reason = (
                f"its pickle calls {found.group(1)}, which a file of plain tensors never needs (refused without "
                "running it)"
            )
        elif "Unsupported operand" in text or "invalid load key" in text:
            reason = "it is not a valid PyTorch pickle (corrupt, or not a torch.save file)"
        else:
            reason = "it contains Python objects, not just tensors (refused without running them)"
        raise ConversionError(
            f"{path}: refusing to load: {reason}; it is not an official A-FINE checkpoint or it has been tampered "
            "with"
        ) from None
    except FileNotFoundError:
        raise ConversionError(f"{path}: file does not exist") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ConversionError(f"{path}: not a readable PyTorch checkpoint ({_one_line(str(exc)) or type(exc).__name__})") from None


def _unwrap_stage(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """BasicSR ``save_network`` files: ``{"params": state_dict}``; drop ``module.`` prefixes."""
    if isinstance(obj, Mapping) and "params" in obj and isinstance(obj["params"], Mapping):
        obj = obj["params"]
    elif isinstance(obj, Mapping) and "params_ema" in obj and isinstance(obj["params_ema"], Mapping):
        obj = obj["params_ema"]
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items()}


def load_official_state_dict(source: str | Path) -> dict[str, dict[str, torch.Tensor]]:
    """Read ``afine.pth`` or a folder of per-stage files into ``{part: state_dict}`` (the six official parts)."""
    source = Path(source)
    if source.is_dir():
        present = {part: source / name for part, name in STAGE_FILES.items() if (source / name).is_file()}
        merged = source / "afine.pth"
        if not present and merged.is_file():
            return load_official_state_dict(merged)
        missing = [STAGE_FILES[p] for p in OFFICIAL_KEYS if p not in present]
        if missing:
            raise ConversionError(f"{source}: missing per-stage file(s): {', '.join(missing)}")
        return {part: _unwrap_stage(_safe_load(path), path) for part, path in present.items()}
    if not source.exists():
        raise ConversionError(f"{source}: file does not exist")
    obj = _safe_load(source)
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{source}: expected a dict with keys {list(OFFICIAL_KEYS)}, got {type(obj).__name__}")
    problems = []
    missing = [k for k in OFFICIAL_KEYS if k not in obj]
    extra = [k for k in obj if k not in OFFICIAL_KEYS]
    if missing:
        problems.append(f"missing top-level keys {missing}")
    if extra:
        problems.append(f"unexpected top-level keys {extra}")
    if problems:
        raise ConversionError(f"{source}: not an official afine.pth: " + "; ".join(problems))
    out = {}
    for key in OFFICIAL_KEYS:
        if not isinstance(obj[key], Mapping):
            raise ConversionError(f"{source}: entry {key!r} is a {type(obj[key]).__name__}, expected a state dict")
        out[key] = _unwrap_stage(obj[key], source)
    return out


def config_from_official(parts: Mapping[str, Mapping[str, torch.Tensor]], **overrides: Any) -> AfineConfig:
    """Infer the architecture from tensor shapes (OpenAI rule: heads = width // 64)."""
    from .configuration_afine import AfineConfig

    clip = parts["finetuned_clip"]
    try:
        conv = clip["visual.conv1.weight"]
        pos = clip["visual.positional_embedding"]
        fc = clip["visual.transformer.resblocks.0.mlp.c_fc.weight"]
        proj_feat = parts["natural"]["proj_feat.weight"]
        proj_head = parts["natural"]["proj_head.0.weight"]
    except KeyError as exc:
        raise ConversionError(f"cannot infer the architecture: missing key {exc}") from exc
    width, patch = int(conv.shape[0]), int(conv.shape[-1])
    layers = len({m.group(1) for k in clip if (m := re.match(r"^visual\.transformer\.resblocks\.(\d+)\.", k))})
    grid = int(round((pos.shape[0] - 1) ** 0.5))
    if grid * grid + 1 != pos.shape[0]:
        raise ConversionError(f"visual.positional_embedding has {pos.shape[0]} rows, not 1 + a square grid")
    vision = dict(
        hidden_size=width,
        intermediate_size=int(fc.shape[0]),
        num_hidden_layers=layers,
        num_attention_heads=max(1, width // 64),
        image_size=grid * patch,
        patch_size=patch,
    )
    vision.update(overrides.pop("vision_config", {}))
    return AfineConfig(
        vision_config=vision,
        natural_hidden_dim=int(proj_feat.shape[0]),
        natural_mlp_dim=int(proj_head.shape[0]),
        **overrides,
    )


def _map_visual_key(key: str) -> list[str] | None:
    """Official ``visual.*`` key -> transformers key(s); None when the key has no counterpart."""
    fixed = {
        "visual.class_embedding": "embeddings.class_embedding",
        "visual.positional_embedding": "embeddings.position_embedding.weight",
        "visual.conv1.weight": "embeddings.patch_embedding.weight",
        "visual.ln_pre.weight": "pre_layrnorm.weight",
        "visual.ln_pre.bias": "pre_layrnorm.bias",
        "visual.ln_post.weight": "post_layernorm.weight",
        "visual.ln_post.bias": "post_layernorm.bias",
    }
    if key in fixed:
        return [fixed[key]]
    m = re.match(r"^visual\.transformer\.resblocks\.(\d+)\.(.+)$", key)
    if not m:
        return None
    i, rest = m.group(1), m.group(2)
    prefix = f"encoder.layers.{i}."
    if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
        kind = "weight" if rest.endswith("weight") else "bias"
        return [f"{prefix}self_attn.{p}_proj.{kind}" for p in ("q", "k", "v")]
    simple = {
        "attn.out_proj.weight": "self_attn.out_proj.weight",
        "attn.out_proj.bias": "self_attn.out_proj.bias",
        "ln_1.weight": "layer_norm1.weight",
        "ln_1.bias": "layer_norm1.bias",
        "ln_2.weight": "layer_norm2.weight",
        "ln_2.bias": "layer_norm2.bias",
        "mlp.c_fc.weight": "mlp.fc1.weight",
        "mlp.c_fc.bias": "mlp.fc1.bias",
        "mlp.c_proj.weight": "mlp.fc2.weight",
        "mlp.c_proj.bias": "mlp.fc2.bias",
    }
    return [prefix + simple[rest]] if rest in simple else None


_HEAD_PREFIX = {
    "natural": "natural_head.",
    "fidelity": "fidelity_head.",
    "natural_scale": "natural_calibration.",
    "fidelity_scale": "fidelity_calibration.",
    "adapter": "adapter.",
}


def official_to_hf_state_dict(
    parts: Mapping[str, Mapping[str, torch.Tensor]],
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map the six official parts to ``AfineModel`` keys. Returns ``(state_dict, unexpected_keys)``."""
    import torch

    out: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for key, value in parts["finetuned_clip"].items():
        if _TEXT_KEY.match(key) or key in _UNUSED_VISUAL:
            continue
        targets = _map_visual_key(key)
        if targets is None:
            unexpected.append(f"finetuned_clip.{key}")
            continue
        value = value.detach().to(torch.float32)
        if len(targets) == 3:  # fused [q; k; v] projection of nn.MultiheadAttention
            if value.shape[0] % 3:
                unexpected.append(f"finetuned_clip.{key} (first dim {value.shape[0]} not divisible by 3)")
                continue
            for target, chunk in zip(targets, value.chunk(3, dim=0)):
                out["vision_model." + target] = chunk.clone().contiguous()
        else:
            out["vision_model." + targets[0]] = value.clone().contiguous()
    for part, prefix in _HEAD_PREFIX.items():
        for key, value in parts[part].items():
            out[prefix + key] = value.detach().to(torch.float32).clone().contiguous()
    return out, unexpected


def _check_against_model(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], unexpected: list[str]) -> None:
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state_dict)
    extra = sorted(k for k in state_dict if k not in own) + unexpected
    shapes = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    )
    if missing or extra or shapes:
        lines = ["the checkpoint does not match the A-FINE architecture:"]
        if missing:
            lines.append(f"  missing ({len(missing)}): " + ", ".join(missing))
        if extra:
            lines.append(f"  unexpected ({len(extra)}): " + ", ".join(extra))
        if shapes:
            lines.append(f"  wrong shape ({len(shapes)}): " + "; ".join(shapes))
        raise ConversionError("\n".join(lines))


def build_model_from_official(source: str | Path | Mapping[str, Mapping[str, torch.Tensor]], **config_overrides: Any):
    """Load an official checkpoint (path, folder or already loaded parts) into a new ``AfineModel``."""
    from .modeling_afine import AfineModel

    parts = load_official_state_dict(source) if isinstance(source, (str, Path)) else dict(source)
    config = config_from_official(parts, **config_overrides)
    state_dict, unexpected = official_to_hf_state_dict(parts)
    model = AfineModel(config)
    _check_against_model(model, state_dict, unexpected)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def save_model_folder(
    model: Any, output_dir: str | Path, *, with_code: bool = True, state_dict: Optional[Mapping[str, Any]] = None
) -> Path:
    """Save ``model`` (an ``AfineModel``), its image processor and, with ``with_code``, the model code with
    ``auto_map`` and the pipeline module with ``custom_pipelines`` into ``output_dir``, so that
    ``AutoModel.from_pretrained(output_dir, trust_remote_code=True)`` and ``transformers.pipeline(
    "image-quality-assessment", model=output_dir, trust_remote_code=True)`` work without this package (without
    ``with_code`` the config names no code at all). ``state_dict`` (optional) replaces the model's own, e.g. one
    gathered by DeepSpeed / FSDP. Used by ``afine convert`` and by every training stage's export."""
    from transformers.dynamic_module_utils import custom_object_save

    from .image_processing_afine import AfineImageProcessor
    from .pipeline_afine import ImageQualityAssessmentPipeline, custom_pipelines_entry

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    processor = AfineImageProcessor.for_config(model.config)
    classes = (type(model.config), type(model), AfineImageProcessor)
    previous = [getattr(c, "_auto_class", None) for c in classes]
    saved_keys = ("auto_map", "custom_pipelines")  # what a folder loaded earlier may carry in its config
    previous_keys = {k: model.config.__dict__[k] for k in saved_keys if k in model.config.__dict__}
    try:
        if with_code:
            # Copies configuration/modeling/processing files (and their relative imports) next to the weights
            # and writes `auto_map`.
            type(model.config).register_for_auto_class()
            type(model).register_for_auto_class("AutoModel")
            AfineImageProcessor.register_for_auto_class("AutoImageProcessor")
            # transformers.pipeline("image-quality-assessment", model=folder, trust_remote_code=True) without
            # this package: the pipeline module (and its relative imports) plus `custom_pipelines`.
            model.config.custom_pipelines = custom_pipelines_entry()
            custom_object_save(ImageQualityAssessmentPipeline, output_dir)
        else:  # no code in the folder: it must not point at any
            for key in saved_keys:
                model.config.__dict__.pop(key, None)
        model.save_pretrained(output_dir, state_dict=dict(state_dict) if state_dict is not None else None)
        processor.save_pretrained(output_dir)
    finally:  # do not leak the registration into later, unrelated saves
        for cls, value in zip(classes, previous):
            cls._auto_class = value
        for key in saved_keys:
            model.config.__dict__.pop(key, None)
        model.config.__dict__.update(previous_keys)
    return output_dir


def convert_afine_checkpoint(
    source: str | Path,
    output_dir: str | Path,
    *,
    with_code: bool = True,
    model_card: bool = True,
    **config_overrides: Any,
) -> Path:
    """Convert ``source`` (``afine.pth`` or a per-stage folder) and save a model directory at ``output_dir``.

    With ``model_card`` (default) a ``README.md`` with Hub metadata is written too (see :func:`write_model_card`),
    so the folder is a complete Hub model repository (``hf upload ORG/afine ./afine``).

    Returns the output directory. Raises :class:`ConversionError` on any layout problem; nothing is written then.
    """
    model = build_model_from_official(source, **config_overrides)
    output_dir = save_model_folder(model, output_dir, with_code=with_code)
    if model_card:
        write_model_card(output_dir, source=Path(source).name, with_code=with_code)
    return output_dir


#: Hub metadata of a converted A-FINE model repository (the YAML header of its README.md).
MODEL_CARD_METADATA = {
    "library_name": "transformers",
    "license": "apache-2.0",
    "base_model": "openai/clip-vit-base-patch32",
    "base_model_relation": "finetune",
    "tags": ["image-quality-assessment", "full-reference-iqa", "no-reference-iqa", "afine", "clip", "custom_code"],
    "metrics": ["afine"],
}


def write_model_card(output_dir: str | Path, *, source: str = "afine.pth", with_code: bool = True) -> Path:
    """Write ``output_dir/README.md``: the Hub model card of a converted A-FINE folder.

    The YAML metadata (:data:`MODEL_CARD_METADATA`) names the library (transformers), the license
    (Apache-2.0, as the official code and weights), the base model (OpenAI CLIP ViT-B/32), the tags (including
    ``image-quality-assessment``) and the ``afine`` evaluate metric; the text says how to load and read it.
    """
    from huggingface_hub import ModelCard, ModelCardData

    meta = dict(MODEL_CARD_METADATA)
    if not with_code:
        meta["tags"] = [t for t in meta["tags"] if t != "custom_code"]
    data = ModelCardData(**meta)
    remote = (
        "\n# without the afine-hf package (the model code is in this repository):\n"
        'model = AutoModel.from_pretrained("ORG/afine", trust_remote_code=True)\n'
        if with_code else ""
    )
    remote_pipe = (
        "\n# without the afine-hf package (the pipeline code is in this repository):\n"
        'pipe = pipeline("image-quality-assessment", model="ORG/afine", trust_remote_code=True)\n'
        if with_code else ""
    )
    text = f"""---
{data.to_yaml()}
---

# A-FINE (converted for transformers)

[A-FINE](https://github.com/ChrisDud0257/AFINE) (Chen, Wu, Ma and Zhang, CVPR 2025) is a full-reference image
quality model that does not assume the reference is perfect: it adds the **fidelity** of the image under test
to its reference and the **naturalness** of the test image, weighted by how natural the reference is.
This folder holds the official weights (converted from `{source}`) as a transformers `AfineModel`, with its
image processor{" and model code" if with_code else ""}; the numbers are those of the official code.

**Every output is lower-is-better**: `score` 0–100 (0 best), `score_raw` (unbounded), `fidelity`,
`naturalness_distorted` and `naturalness_reference` (calibrated to (-2, 2)). The model is asymmetric: the
image under test goes first, the reference second.

## Use

```python
import modeling_afine                      # pip install afine-hf: registers the model with the Auto classes
from transformers import AutoModel
from modeling_afine import AfineScorer

model = AutoModel.from_pretrained("ORG/afine")   # or the local folder, e.g. "afine"
{remote}
scorer = AfineScorer("ORG/afine")
print(scorer.score("distorted.png", "reference.png").score)   # lower is better
```

### transformers pipeline

```python
import modeling_afine                      # registers the "image-quality-assessment" task
from transformers import pipeline

pipe = pipeline("image-quality-assessment", model="ORG/afine")
{remote_pipe}
pipe("distorted.png", reference="reference.png")
# {{'score': ..., 'score_raw': ..., 'fidelity': ..., 'naturalness_distorted': ..., 'naturalness_reference': ...}}
pipe([{{"distorted": "a.png", "reference": "ref.png"}}, {{"distorted": "b.png", "reference": "ref.png"}}], batch_size=8)
pipe("photo.png")                          # no reference: {{'naturalness': ...}}
```

Inputs are paths, PIL images or numpy arrays; every number is lower-is-better.

The `evaluate` metric: `evaluate.load("afine", model="ORG/afine")` (see the afine-hf documentation).
Command line: `afine score distorted.png reference.png --model ORG/afine`.

## Citation

```bibtex
@inproceedings{{chen2025afine,
  title     = {{Toward Generalized Image Quality Assessment: Relaxing the Perfect Reference Quality Assumption}},
  author    = {{Chen, Du and Wu, Tianhe and Ma, Kede and Zhang, Lei}},
  booktitle = {{Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)}},
  year      = {{2025}}
}}
```
"""
    path = Path(output_dir) / "README.md"
    ModelCard(text).save(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="afine convert",
        description="Convert the official A-FINE afine.pth (or the per-stage training files) to a transformers "
        "model directory loadable with AutoModel.from_pretrained.",
    )
    parser.add_argument("source", help="path to afine.pth, or a folder with clip_model.pth, net_qhead.pth, ...")
    parser.add_argument("output_dir", nargs="?", default="afine",
                        help="directory to write config.json, model.safetensors, the processor config and the model "
                             "card README.md (default: ./afine, so AutoModel.from_pretrained('afine') loads it)")
    parser.add_argument("--no-code", action="store_true", help="do not copy the model code / auto_map into the directory")
    args = parser.parse_args(argv)
    try:
        out = convert_afine_checkpoint(args.source, args.output_dir, with_code=not args.no_code)
    except ConversionError as exc:
        print(f"afine convert: error: {exc}", file=sys.stderr)
        return 1
    print(f"converted {args.source} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
