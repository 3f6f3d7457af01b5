"""AfineMetric: means against the scorer, torchmetrics semantics, the optional extra, and 2 gloo processes
(the metric's sum/count states synchronised; AfineLoss inside a DDP-wrapped net)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from .conftest import degrade

ROOT = Path(__file__).resolve().parents[2]
OUTPUTS = ("score", "score_raw", "fidelity", "naturalness_distorted", "naturalness_reference")


@pytest.fixture(scope="module")
def batch(photos):
    """Four (distorted, reference) pairs of 96x160 images in [0, 1]; two references."""
    ref_a = photos["chelsea_96x160"]
    ref_b = degrade(ref_a, 2, 0.0)
    dis = [degrade(ref_a, 2, 5.0, seed=1), degrade(ref_a, 4, 0.0), degrade(ref_b, 2, 8.0, seed=2), ref_b]
    refs = [ref_a, ref_a, ref_b, ref_b]

    def t(arrays):
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255

    return t(dis), t(refs), dis, refs


def test_metric_means_equal_the_scorer(model, batch):
    from torchmetrics import Metric

    from modeling_afine import AfineMetric, AfineScorer

    preds, target, dis, refs = batch
    want = AfineScorer(model, num_workers=0).score(dis, refs)
    metric = AfineMetric(model, output="all")
    assert isinstance(metric, Metric)
    assert AfineMetric.higher_is_better is False and AfineMetric.is_differentiable is True
    assert AfineMetric.full_state_update is False
    metric.update(preds[:3], target[:3])
    metric.update(preds[3:], target[3:])
    got = metric.compute()
    assert set(got) == set(OUTPUTS)
    for name in OUTPUTS:
        assert float(got[name]) == pytest.approx(float(getattr(want, name).double().mean()), abs=2e-5), name
    # the default output is the 0-100 score; forward gives the batch value and accumulates
    single = AfineMetric(model)
    batch_value = single(preds[:2], target[:2])
    assert float(batch_value) == pytest.approx(float(want.score[:2].mean()), abs=2e-5)
    single.update(preds[2:], target[2:])
    assert float(single.compute()) == pytest.approx(float(want.score.mean()), abs=2e-5)
    single.reset()
    single.update(preds[:1], target[:1])
    assert float(single.compute()) == pytest.approx(float(want.score[0]), abs=2e-5)
    # the A-FINE weights are not part of the metric's state dict
    assert not any(key.startswith(("afine.", "model.")) for key in single.state_dict())
    with pytest.raises(ValueError, match="output must be 'all' or one of"):
        AfineMetric(model, output="mos")


def test_metric_warns_when_launched_distributed_without_a_process_group(model, batch, monkeypatch):
    from modeling_afine import AfineMetric

    preds, target, _, _ = batch
    metric = AfineMetric(model)
    metric.update(preds[:1], target[:1])
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.warns(UserWarning, match="init_process_group"):
        metric.compute()


def test_metric_is_differentiable(model, batch):
    from modeling_afine import AfineMetric

    preds, target, _, _ = batch
    x = preds[:2].clone().requires_grad_()
    AfineMetric(model)(x, target[:2]).backward()
    assert x.grad is not None and x.grad.abs().max() > 0


def test_import_works_without_torchmetrics_and_the_metric_names_the_extra(converted_dir):
    code = (
        "import sys\n"
        "sys.modules['torchmetrics'] = None  # blocks the import, as if not installed\n"
        "import modeling_afine, torch\n"
        "from modeling_afine import AfineLoss, AfineMetric\n"
        f"loss = AfineLoss({str(converted_dir)!r})\n"
        "assert loss(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)).shape == ()\n"
        "try:\n"
        f"    AfineMetric({str(converted_dir)!r})\n"
        "except ImportError as exc:\n"
        "    print('IMPORT-ERROR:', exc)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "IMPORT-ERROR:" in res.stdout and "pip install afine-hf[metrics]" in res.stdout


# ------------------------------------------------------------------------------------------------ 2 processes


class _Restorer(torch.nn.Module):
    """A tiny restoration net that holds its loss, as users do; only the conv is trainable."""

    def __init__(self, loss):
        super().__init__()
        self.net = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.criterion = loss

    def forward(self, x, ref):
        out = x + self.net(x)
        return self.criterion(out, ref) + torch.nn.functional.l1_loss(out, ref)


def _worker(rank: int, world: int, model_dir: str, data: str, out_dir: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from modeling_afine import AfineLoss, AfineMetric

    dist.init_process_group("gloo", init_method=f"file://{out_dir}/rendezvous", rank=rank, world_size=world)
    try:
        preds, target = torch.load(data)
        mine = list(range(rank, len(preds), world))  # the project's sharding rule: item i on rank i % W
        metric = AfineMetric(model_dir, output="all")
        metric.update(preds[mine], target[mine])
        means = {k: float(v) for k, v in metric.compute().items()}

        torch.manual_seed(0)
        ddp = DistributedDataParallel(_Restorer(AfineLoss(metric.afine.model)))
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        for _ in range(2):  # a second step fails if DDP saw an unused parameter in the first
            opt.zero_grad()
            ddp(preds[mine], target[mine]).backward()
            opt.step()
        weights = ddp.module.net.weight.detach().clone()
        torch.save({"means": means, "weights": weights, "state": list(ddp.module.state_dict())}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_sync_the_metric_and_train_with_the_loss_under_ddp(converted_dir, model, batch, tmp_path):
    import torch.multiprocessing as mp

    from modeling_afine import AfineMetric

    preds, target, _, _ = batch
    torch.save((preds, target), tmp_path / "data.pt")
    mp.spawn(_worker, args=(2, str(converted_dir), str(tmp_path / "data.pt"), str(tmp_path)), nprocs=2, join=True)
    full = AfineMetric(model, output="all")
    full.update(preds, target)
    want = {k: float(v) for k, v in full.compute().items()}
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for res in results:
        for name in OUTPUTS:
            assert res["means"][name] == pytest.approx(want[name], abs=2e-5), name
        assert res["state"] == ["net.weight", "net.bias"]  # no A-FINE weights in the parent's checkpoint
    # DDP averaged the gradients: both ranks hold the same, updated weights
    assert torch.equal(results[0]["weights"], results[1]["weights"])
