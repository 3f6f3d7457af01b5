"""Training data: sources, the shared augmentation, and the resumable process-sharded sampler."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.datasets.conftest import make_diffiqa
from training.data import DataSourceError, StepBatchSampler, TripletDataset, triplets_from_dataset, triplets_from_txt

from .conftest import run_train

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def test_sampler_shards_and_resumes():
    n, b = 10, 2
    one = StepBatchSampler(n, b * 2, max_steps=6, seed=3)
    r0 = StepBatchSampler(n, b, max_steps=6, seed=3, num_processes=2, process_index=0)
    r1 = StepBatchSampler(n, b, max_steps=6, seed=3, num_processes=2, process_index=1)
    for s_one, s0, s1 in zip(one, r0, r1):
        assert [i for i, _ in s_one] == [i for i, _ in s0] + [i for i, _ in s1]  # the global batch is split
        assert not set(i for i, _ in s0) & set(i for i, _ in s1)
    # 10 items, global batch 4 -> 2 steps per epoch (tail dropped); each epoch is a fresh permutation
    steps = [sorted(i for i, _ in batch) for batch in StepBatchSampler(n, 4, max_steps=4, seed=3)]
    assert len(set(steps[0]) | set(steps[1])) == 8
    resumed = list(StepBatchSampler(n, 4, max_steps=6, seed=3, start_step=4))
    full = list(StepBatchSampler(n, 4, max_steps=6, seed=3))
    assert resumed == full[4:] and all(k[1] in (5, 6) for batch in resumed for k in batch)
    with pytest.raises(DataSourceError):
        StepBatchSampler(3, 2, max_steps=1, num_processes=2)


def test_same_dihedral_transform_on_the_three_images(triplet_txt):
    txt, images = triplet_txt
    triplets = triplets_from_txt(txt, images)
    assert len(triplets) == 20 and triplets[3].g2ref == 0.5
    # an (img, ref, ref) triplet: img2 and ref are the same file, so they must stay equal after augmentation
    ds = TripletDataset(triplets, image_mean=MEAN, image_std=STD, seed=0)
    plain = TripletDataset(triplets, image_mean=MEAN, image_std=STD, hflip=False, rot=False)
    seen = set()
    for step in range(16):
        item = ds[(3, step)]
        assert torch.equal(item["img2"], item["ref"])
        base = plain[(3, step)]["img1"]
        variants = {"id": base, "h": base.flip(-1), "v": base.flip(-2), "hv": base.flip(-1).flip(-2),
                    "t": base.transpose(-1, -2), "ht": base.flip(-1).transpose(-1, -2),
                    "vt": base.flip(-2).transpose(-1, -2), "hvt": base.flip(-1).flip(-2).transpose(-1, -2)}
        match = [k for k, v in variants.items() if v.shape == item["img1"].shape and torch.equal(v, item["img1"])]
        assert match
        seen.add(match[0])
        assert torch.equal(ds[(3, step)]["img1"], item["img1"])  # a pure function of (seed, step, index)
    assert len(seen) >= 4
    # CLIP normalisation of the loaded pixels
    from modeling_afine.image_io import load_image_array

    raw = torch.from_numpy(load_image_array(triplets[0].img1).copy()).permute(2, 0, 1).float() / 255
    expected = (raw - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    assert torch.allclose(plain[(0, 0)]["img1"], expected, atol=1e-6)


def test_txt_source_errors(tmp_path, triplet_txt):
    _, images = triplet_txt
    bad = tmp_path / "t.txt"
    bad.write_text("a.png,b.png,c.png,1,0,0\n")
    with pytest.raises(DataSourceError, match="not found"):
        triplets_from_txt(bad, images)
    bad.write_text("a.png,b.png\n")
    with pytest.raises(DataSourceError, match=str(bad)):
        triplets_from_txt(bad, images)


def test_stage1_on_a_dataset_scripts_source(tmp_path, tiny_config_file, hf_cache):
    root = tmp_path / "DiffIQA"
    make_diffiqa(root)
    triplets = triplets_from_dataset("diffiqa", root, split="train", cache_dir=str(hf_cache))
    assert triplets and all(t.g12 in (0.0, 0.5, 1.0) for t in triplets)
    assert any(t.img2 == t.ref for t in triplets)  # the (img, ref, ref) triplets of spec §3.1 (b)
    cfg = tmp_path / "s1.json"
    cfg.write_text(json.dumps({"stage": 1, "data": [{"dataset": "diffiqa", "data_dir": None, "split": "train"}]}))
    out = tmp_path / "run"
    rc = run_train(["--config", str(cfg), "--init", str(tiny_config_file), "--output-dir", str(out), "--data",
                    f"diffiqa={root}", "--cache-dir", str(hf_cache), "--max-steps", "1", "--per_device_train_batch_size", "3",
                    "--dataloader_num_workers", "0", "--disable_tqdm", "true", "--use_cpu"])
    assert rc == 0
    saved = json.loads((out / "afine_config.json").read_text())
    assert saved["data"][0]["data_dir"] == str(root)
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines() if '"loss"' in x][-1]
    assert math.isfinite(log["loss"]) and {"loss_12", "loss_1ref", "loss_2ref"} <= set(log)
    # the stage-1 config validates on DiffIQA PNY (validation split) with the training folder (spec §6.8 fixed)
    val = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines() if "val_2afc" in x]
    assert val and "diffiqa/PNY/validation" in val[-1]["val_2afc"]
