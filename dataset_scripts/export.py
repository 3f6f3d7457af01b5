"""Export any view to Parquet, in a layout that ``push_to_hub`` / the Hub's dataset viewer understand.

Layout written under ``out_dir``::

    README.md                         # YAML front matter with one ``configs:`` entry per config
    {config}/{split}-00000-of-0000N.parquet

Image bytes are embedded in the Parquet files (so they no longer point at the local dataset folder), and
the ``datasets`` feature types (``Image``, ...) are stored in the Parquet schema metadata. The folder loads
with plain ``datasets.load_dataset(out_dir, config)`` or ``load_dataset("parquet", data_files=...)``, and
can be uploaded as is (``huggingface_hub.upload_folder(repo_type="dataset", ...)``).

Mind the licences: DiffIQA and SRIQA-Bench are for non-commercial research only and their authors do
not allow redistribution; export them for private use or private repositories.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Optional, Sequence, Union

__all__ = ["export_parquet", "export_views", "write_readme"]

PathLike = Union[str, os.PathLike]


def _embed(ds):
    from datasets.table import embed_table_storage

    fmt = ds.format
    out = ds.with_format("arrow").map(embed_table_storage, batched=True, batch_size=100, keep_in_memory=True)
    return out.with_format(**fmt)


def export_parquet(
    ds,
    out_dir: PathLike,
    config_name: str = "default",
    *,
    max_rows_per_shard: int = 1000,
    embed_images: bool = True,
    readme: bool = True,
) -> list[Path]:
    """Write a ``Dataset`` (split ``train`` unless it has a split name) or ``DatasetDict`` as Parquet shards
    under ``out_dir/config_name/`` and (re)write ``out_dir/README.md`` listing every config found there.

    Returns the written Parquet paths.
    """
    import datasets

    if not re.fullmatch(r"[A-Za-z0-9_.-]+", config_name):
        raise ValueError(f"config name {config_name!r} must be letters, digits, '_', '-', '.'")
    if isinstance(ds, datasets.Dataset):
        ds = datasets.DatasetDict({str(ds.split) if ds.split is not None else "train": ds})
    out = Path(out_dir) / config_name
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.parquet"):
        old.unlink()
    written = []
    for split, part in ds.items():
        n = max(1, math.ceil(len(part) / max_rows_per_shard))
        for i in range(n):
            shard = part.shard(num_shards=n, index=i, contiguous=True)
            if embed_images:
                shard = _embed(shard)
            path = out / f"{split}-{i:05d}-of-{n:05d}.parquet"
            shard.to_parquet(str(path))
            written.append(path)
    if readme:
        write_readme(out_dir)
    return written


def write_readme(out_dir: PathLike, title: Optional[str] = None, body: str = "") -> Path:
    """Write ``README.md`` with the ``configs:`` YAML for every ``{config}/{split}-*.parquet`` in ``out_dir``."""
    out_dir = Path(out_dir)
    lines = ["---", "configs:"]
    for cfg in sorted(p for p in out_dir.iterdir() if p.is_dir() and any(p.glob("*.parquet"))):
        splits = sorted({f.name.split("-")[0] for f in cfg.glob("*.parquet")})
        lines.append(f"- config_name: {cfg.name}")
        lines.append("  data_files:")
        for s in splits:
            lines.append(f"  - split: {s}")
            lines.append(f"    path: {cfg.name}/{s}-*.parquet")
    lines.append("---")
    lines.append("")
    lines.append(f"# {title or out_dir.name}")
    lines.append("")
    lines.append(body or "Exported with `afine data export` (package `dataset_scripts`). Field meanings and label "
                         "directions: see docs/datasets.md of the afine-hf project.")
    path = out_dir / "README.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def export_views(
    dataset: str,
    data_dir: PathLike,
    out_dir: PathLike,
    configs: Optional[Sequence[str]] = None,
    *,
    cache_dir: Optional[PathLike] = None,
    seed: int = 0,
    max_rows_per_shard: int = 1000,
) -> dict[str, list[Path]]:
    """Load each config of ``dataset`` (default: all) from ``data_dir`` and export it under ``out_dir``."""
    from .loading import config_names, load

    names = list(configs) if configs else config_names(dataset)
    out: dict[str, list[Path]] = {}
    for name in names:
        ds = load(dataset, data_dir, name, cache_dir=cache_dir, seed=seed)
        out[name] = export_parquet(ds, out_dir, name, max_rows_per_shard=max_rows_per_shard, readme=False)
    write_readme(out_dir, title=f"{dataset} (A-FINE views)")
    return out
