"""Hub-ready model folders from training: weights, processor, the model code with ``auto_map``, a model card.

A folder written by :func:`save_model_folder` loads without this package::

    AutoModel.from_pretrained(folder, trust_remote_code=True)
    AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)

exactly as a folder written by ``afine convert`` (``modeling_afine.convert_afine_checkpoint``), whose
registration of the three classes for the Auto API this mirrors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional

__all__ = ["save_model_folder", "write_model_card"]


def save_model_folder(model, output_dir, *, state_dict: Optional[Mapping[str, Any]] = None) -> Path:
    """Save ``model`` (an ``AfineModel``) + its image processor + code files with ``auto_map`` to ``output_dir``
    (the converter's own writer, so stage exports and ``afine convert`` folders are the same kind of folder).

    ``state_dict`` (optional) replaces the model's own, e.g. one gathered by DeepSpeed / FSDP.
    """
    from modeling_afine.convert_afine_checkpoint import save_model_folder as write_folder

    return write_folder(model, output_dir, with_code=True, state_dict=state_dict)


_STAGE_TEXT = {
    1: "stage 1 (CLIP vision tower + naturalness head, trained on raw naturalness)",
    2: "stage 2 (fidelity head on the stage-1 CLIP)",
    3: "stage 3 (naturalness / fidelity calibrations and the adapter: the complete A-FINE model)",
}


def write_model_card(output_dir, *, stage: int, config: Mapping[str, Any], training: Mapping[str, Any],
                     validation: Optional[Mapping[str, float]] = None, repo_id: Optional[str] = None) -> Path:
    """Write ``README.md`` (YAML metadata + usage + how it was trained) into ``output_dir``."""
    output_dir = Path(output_dir)
    name = repo_id or output_dir.resolve().name
    datasets = sorted({str(d["dataset"]) for d in config.get("data", []) if "dataset" in d})
    init = str(config.get("init", ""))
    meta = ["---", "library_name: transformers", "tags:", "- image-quality-assessment", "- full-reference-iqa",
            "- a-fine", "- custom_code"]
    if datasets:
        meta += ["datasets:"] + [f"- {d}" for d in datasets]
    if init and "/" in init and not Path(init).exists():
        meta.append(f"base_model: {init}")
    meta.append("---")
    lines = meta + [
        "",
        f"# {name}",
        "",
        f"A-FINE (Adaptive Fidelity-Naturalness Evaluator, CVPR 2025) full-reference image quality model after "
        f"{_STAGE_TEXT.get(int(stage), f'stage {stage}')}, trained with the `afine-hf` package "
        "(transformers `Trainer`). **Lower scores are better** for every output.",
        "",
        "## Usage (no extra package needed)",
        "",
        "```python",
        "import torch",
        "from PIL import Image",
        "from transformers import AutoImageProcessor, AutoModel",
        "",
        f"model = AutoModel.from_pretrained({name!r}, trust_remote_code=True).eval()",
        f"processor = AutoImageProcessor.from_pretrained({name!r}, trust_remote_code=True)",
        "distorted = processor.preprocess_images(Image.open('distorted.png'))",
        "reference = processor.preprocess_images(Image.open('reference.png'))",
        "with torch.no_grad():",
        "    out = model(distorted, reference)",
        "print(out.score)  # 0-100, lower = better",
        "```",
        "",
        "## Training",
        "",
        f"- stage: {stage}; started from `{init}`",
        f"- trained modules and learning rates: {json.dumps(config.get('lr', {}))}",
        f"- optimizer steps: {training.get('steps')} of {config.get('max_steps')}; triplets per step: "
        f"{training.get('global_batch_size')} ({config.get('batch_size')} per process x "
        f"{training.get('gradient_accumulation_steps')} accumulation x {training.get('num_processes')} processes)",
        f"- AdamW {json.dumps(config.get('optimizer', {}))}; cosine annealing with restarts "
        f"{json.dumps(config.get('scheduler', {}))} (periods scaled to the run length)",
        f"- data: {', '.join(datasets) or 'official-format triplet files'}; seed {config.get('seed')}",
    ]
    if validation:
        lines += ["", "## Validation (2AFC accuracy, delta 0, at the last evaluation)", "", "| set | 2AFC |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in validation.items()]
    path = output_dir / "README.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
