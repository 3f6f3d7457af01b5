"""Fine-tune a small restoration net with L1 + A-FINE (see docs/loss-and-metric.md).

    python examples/finetune_with_afine_loss.py --model ./afine                     # L1 + fidelity (the safe default)
    python examples/finetune_with_afine_loss.py --model ./afine --score-weight 0.001 --soft-reference
        # adds the full A-FINE score: its naturalness term can reward outputs sharper than a soft (blurred) reference

The data is one photo (``examples/reference.png``, or ``--image``) cut into random crops; the input is a blurred,
noisy copy and the target the clean crop (``--soft-reference``: a mildly blurred crop, as an imperfect ground
truth). Every A-FINE number is lower-is-better. ``--model`` takes a converted folder, a Hub id or ``afine.pth``
(default: the official weights, downloaded once).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from modeling_afine import AfineLoss, load_image_array

HERE = Path(__file__).resolve().parent


class TinyRestorer(torch.nn.Module):
    """A residual CNN: out = x + f(x). It owns its loss, yet its state_dict holds only the CNN's weights."""

    def __init__(self, loss: AfineLoss, width: int = 32) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, width, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(width, width, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(width, 3, 3, padding=1),
        )
        self.afine = loss

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = (k / k.sum()).to(x.device)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), k.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)


def batches(photo: torch.Tensor, crop: int, batch: int, soft: bool, generator: torch.Generator):
    """Endless (degraded input, target) batches of random crops, in [0, 1]."""
    _, h, w = photo.shape
    while True:
        ys = torch.randint(0, h - crop + 1, (batch,), generator=generator)
        xs = torch.randint(0, w - crop + 1, (batch,), generator=generator)
        clean = torch.stack([photo[:, y : y + crop, x : x + crop] for y, x in zip(ys.tolist(), xs.tolist())])
        target = blur(clean, 0.8) if soft else clean
        degraded = (blur(clean, 1.6) + 0.03 * torch.randn(clean.shape, generator=generator)).clamp(0, 1)
        yield degraded, target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="A-FINE weights (converted folder, Hub id or afine.pth)")
    parser.add_argument("--image", default=str(HERE / "reference.png"))
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--crop", type=int, default=96)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--fidelity-weight", type=float, default=0.1)
    parser.add_argument("--score-weight", type=float, default=0.0, help="weight of the 0-100 score (try 0.001)")
    parser.add_argument("--soft-reference", action="store_true", help="train against mildly blurred targets")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--save", default=None, help="save the net's state_dict here (no A-FINE weights in it)")
    args = parser.parse_args()

    photo = torch.from_numpy(load_image_array(args.image).copy()).permute(2, 0, 1).float() / 255
    # One frozen A-FINE, shared by the training loss and the logging; never in train mode, never in state_dict().
    afine = AfineLoss(args.model, output="fidelity", gradient_checkpointing=True)
    net = TinyRestorer(afine).to(args.device)  # .to() moves A-FINE too
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)  # only the CNN's parameters
    data = batches(photo, args.crop, args.batch, args.soft_reference, torch.Generator().manual_seed(0))

    net.train()
    for step in range(1, args.steps + 1):
        degraded, target = (t.to(args.device) for t in next(data))
        out = net(degraded)
        l1 = F.l1_loss(out, target)
        # One A-FINE pass gives every term: fidelity F in (-2, 2) and the 0-100 score (both lower-is-better).
        terms = afine.outputs(out, target)
        loss = l1 + args.fidelity_weight * terms.fidelity.mean() + args.score_weight * terms.score.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == 1 or step % 10 == 0:
            print(
                f"step {step:4d}  loss {loss.item():.4f}  L1 {l1.item():.4f}  fidelity {terms.fidelity.mean().item():+.3f}  "
                f"N(out) {terms.naturalness_distorted.mean().item():+.3f}  N(target) {terms.naturalness_reference.mean().item():+.3f}  "
                f"score {terms.score.mean().item():.2f}"
            )
    if args.save:
        torch.save(net.state_dict(), args.save)  # the CNN only: A-FINE's weights are not part of it
        print(f"saved {args.save}: {sorted(net.state_dict())}")


if __name__ == "__main__":
    main()
