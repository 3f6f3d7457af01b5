"""Export views to the Hub's standard dataset form: Parquet shards plus a dataset card.

Layout written under ``out_dir`` (the layout ``push_to_hub`` produces, one folder per config)::

    README.md                         # dataset card: YAML ``configs:`` (data files per split, the default
                                      # config) and ``dataset_info`` (features, splits, sizes), then prose
    {config}/{split}-00000-of-0000N.parquet

* Image bytes are embedded in the Parquet files (``embed_images=True``, the default), so the folder no
  longer depends on the local dataset folder and can be shared. With ``embed_images=False`` the image
  columns keep the absolute paths of the local files: smaller, for local use only.
* The ``datasets`` features (``Image``, ``ClassLabel`` names, ...) are kept in the Parquet schema metadata
  and in the card's ``dataset_info``, so ``datasets.load_dataset(out_dir, "triplets")`` gives the same
  columns and types as :func:`dataset_scripts.load`.
* A split with no rows (e.g. DiffIQA ``SSY`` in a validation folder without S-S pairs) is left out of the
  export (``datasets`` cannot read a split without data files); the card lists such splits.

Share the folder as a Hub dataset repo with ``hf upload ORG/NAME OUT_DIR --repo-type dataset`` (or
``huggingface_hub.upload_folder(repo_id=..., folder_path=OUT_DIR, repo_type="dataset")``); then
``load_dataset("ORG/NAME", "triplets")``. Mind the licences: DiffIQA and SRIQA-Bench are for
non-commercial research only and their authors do not allow redistribution; share them in private repos.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Optional, Sequence, Union

__all__ = ["export_parquet", "export_views", "write_readme"]

PathLike = Union[str, os.PathLike]

#: Side file listing the splits left out because they had no rows (read by :func:`write_readme`).
_EMPTY_SPLITS = ".empty_splits.json"


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
    default_config: Optional[str] = None,
) -> list[Path]:
    """Write a ``Dataset`` (split ``train`` unless it has a split name) or ``DatasetDict`` as Parquet shards
    under ``out_dir/config_name/`` and (re)write ``out_dir/README.md`` for every config found there.

    Splits with no rows are not written (recorded for the card). Returns the written Parquet paths.
    """
    import datasets

    if not re.fullmatch(r"[A-Za-z0-9_.-]+", config_name):
        raise ValueError(f"config name {config_name!r} must be letters, digits, '_', '-', '.'")
    if max_rows_per_shard < 1:
        raise ValueError("max_rows_per_shard must be at least 1")
    if isinstance(ds, datasets.Dataset):
        ds = datasets.DatasetDict({str(ds.split) if ds.split is not None else "train": ds})
    out = Path(out_dir) / config_name
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.parquet"):
        old.unlink()
    written = []
    empty = []
    for split, part in ds.items():
        if len(part) == 0:
            empty.append(split)
            continue
        n = max(1, math.ceil(len(part) / max_rows_per_shard))
        for i in range(n):
            shard = part.shard(num_shards=n, index=i, contiguous=True)
            if embed_images:
                shard = _embed(shard)
            path = out / f"{split}-{i:05d}-of-{n:05d}.parquet"
            shard.to_parquet(str(path))
            written.append(path)
    side = out / _EMPTY_SPLITS
    if empty:
        side.write_text(json.dumps(empty))
    elif side.exists():
        side.unlink()
    if readme:
        write_readme(out_dir, default_config=default_config)
    return written


def _config_info(cfg_dir: Path):
    """``(DatasetInfo, {split: [files]})`` of one exported config, read back from its Parquet files."""
    import datasets
    import pyarrow.parquet as pq

    files: dict[str, list[Path]] = {}
    for f in sorted(cfg_dir.glob("*.parquet")):
        files.setdefault(f.name.split("-")[0], []).append(f)
    order = ("train", "validation", "test", "full")
    files = dict(sorted(files.items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order else len(order), kv[0])))
    features = None
    splits = datasets.SplitDict()
    total = 0
    for split, paths in files.items():
        rows = size = 0
        for p in paths:
            meta = pq.read_metadata(p)
            rows += meta.num_rows
            size += p.stat().st_size
            if features is None:
                hf = (meta.schema.to_arrow_schema().metadata or {}).get(b"huggingface")
                if hf:
                    features = datasets.Features.from_dict(json.loads(hf)["info"]["features"])
        splits.add(datasets.SplitInfo(name=split, num_bytes=size, num_examples=rows))
        total += size
    info = datasets.DatasetInfo(config_name=cfg_dir.name, features=features, splits=splits, download_size=total,
                                dataset_size=total)
    return info, files


def write_readme(out_dir: PathLike, title: Optional[str] = None, body: str = "",
                 default_config: Optional[str] = None) -> Path:
    """Write the dataset card ``README.md`` for every ``{config}/{split}-*.parquet`` in ``out_dir``: YAML
    ``configs`` (data files per split; ``default_config`` marked default) and ``dataset_info`` (features,
    split sizes), then a short description."""
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard, DatasetCardData

    out_dir = Path(out_dir)
    card_data = DatasetCardData()
    infos = {}
    configs = {}
    empty_notes = []
    for cfg in sorted(p for p in out_dir.iterdir() if p.is_dir()):
        side = cfg / _EMPTY_SPLITS
        if side.is_file():
            empty_notes.append(f"`{cfg.name}`: {', '.join(json.loads(side.read_text()))}")
        if not any(cfg.glob("*.parquet")):
            continue
        info, files = _config_info(cfg)
        infos[cfg.name] = info
        configs[cfg.name] = {"data_files": [{"split": s, "path": f"{cfg.name}/{s}-*.parquet"} for s in files]}
        if cfg.name == default_config:
            configs[cfg.name]["default"] = True
    DatasetInfosDict(infos).to_dataset_card_data(card_data)
    MetadataConfigs(configs).to_dataset_card_data(card_data)
    lines = [f"# {title or out_dir.name}", ""]
    lines.append(body or "Exported with `afine data export` (package `dataset_scripts` of the afine-hf project). "
                         "Load a view with `datasets.load_dataset(<this folder or repo>, \"<config>\")`. Labels and "
                         "MOS are higher = better; `g`, `g12`, `g1ref`, `g2ref` are the probability that the first "
                         "image is better (1 / 0.5 / 0). `label` is a ClassLabel Negative 0 < Similar 1 < "
                         "Positive 2; see docs/datasets.md of the project for every column.")
    if empty_notes:
        lines += ["", "Splits without rows (left out): " + "; ".join(empty_notes) + "."]
    card = DatasetCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")
    path = out_dir / "README.md"
    path.write_text(str(card), encoding="utf-8")
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
    embed_images: bool = True,
    num_proc: Optional[int] = None,
) -> dict[str, list[Path]]:
    """Load each config of ``dataset`` (default: all) from ``data_dir`` and export it under ``out_dir``.

    The dataset's default config is marked ``default`` in the card when it is exported.
    """
    from .builders import BUILDERS
    from .loading import _config_name, config_names, load, normalize_dataset_name

    dataset = normalize_dataset_name(dataset)
    names = [_config_name(dataset, n) for n in configs] if configs else config_names(dataset)
    out: dict[str, list[Path]] = {}
    for name in names:
        ds = load(dataset, data_dir, name, cache_dir=cache_dir, seed=seed, num_proc=num_proc)
        out[name] = export_parquet(ds, out_dir, name, max_rows_per_shard=max_rows_per_shard,
                                   embed_images=embed_images, readme=False)
    default = BUILDERS[dataset].DEFAULT_CONFIG_NAME
    write_readme(out_dir, title=f"{dataset} (A-FINE views)", default_config=default if default in names else None)
    return out
