"""How far notebook 12's fit of z goes in a given number of Adam steps, and what a step costs.

    python benchmarks/inpainting_steps.py [--n 16] [--models sos beta] [--lr 0.05] [--starts encoder zero]
                                          [--profile quick] [--dataset portraits] [--data-root DIR] [--runs-dir DIR]

For each trained model (loaded from the runs folder, trained if missing), each kind of box and
each start (`encoder`: the protocol's, the encoder's mean of the image with its hidden pixels in
the visible pixels' mean colour; `zero`: z = 0, the prior's mode), one run of Adam on the first n
test images, with the objective per visible value, the bits per hidden dimension and the MSE of
the conditional mean (`inpainting.score_hidden`) read off at each of --checkpoints steps, and the
milliseconds per image and step on one thread. docs/findings/inpainting.md holds the results.
"""
from __future__ import annotations

import argparse
import time

import torch

from sosvae_core import inpainting
from sosvae_core.likelihood import dequantise
from sosvae_core.notebook import context


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--models", nargs="+", default=["sos", "beta"])
    ap.add_argument("--masks", nargs="+", default=list(inpainting.MASKS))
    ap.add_argument("--starts", nargs="+", default=["encoder", "zero"])
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--checkpoints", type=int, nargs="+", default=[0, 25, 50, 100, 200, 300, 400])
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--dataset")
    ap.add_argument("--data-root")
    ap.add_argument("--runs-dir")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    ctx = context(args.profile, args.dataset, args.data_root, "cpu", seed=args.seed, runs_dir=args.runs_dir)
    images = ctx.test_images(n=args.n)
    x = dequantise(images, torch.Generator().manual_seed(args.seed)).flatten(1)
    truth = images.flatten(1)
    print(f"{ctx.dataset}/{args.profile}: {len(images)} test images, lr {args.lr}, one thread")
    for kind in args.models:
        model = ctx.model(kind).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        for mask in args.masks:
            hidden = inpainting.box_masks(images.shape[1:], len(images), mask, seed=args.seed).flatten(1)
            visible = ~hidden
            for start in args.starts:
                z0 = (inpainting._start(model, x, visible) if start == "encoder"
                      else torch.zeros(len(x), model.latent_dim))
                z = z0.clone().requires_grad_(True)
                opt = torch.optim.Adam([z], lr=args.lr)
                stepping = 0.0
                for step in range(max(args.checkpoints) + 1):
                    t0 = time.perf_counter()
                    objective = inpainting.visible_log_prob(model.decode(z), x, visible) - 0.5 * (z * z).sum(-1)
                    if step in args.checkpoints:
                        scoring = time.perf_counter()
                        s = inpainting.score_hidden(model, z.detach(), x, truth, hidden)
                        per_value = float(objective.detach().mean() / visible.sum(-1).double().mean())
                        print(f"{kind:8s} {mask:7s} {start:8s} step {step:4d}: objective/visible value {per_value:8.3f}  "
                              f"bits/dim conditional {float(s['bits_conditional'].mean()):9.3f} marginal "
                              f"{float(s['bits_marginal'].mean()):9.3f}  MSE conditional "
                              f"{float(s['mse_conditional'].mean()):.5f} marginal {float(s['mse_marginal'].mean()):.5f}"
                              + (f"  {1e3 * stepping / (step * len(x)):.1f} ms per image-step" if step else ""),
                              flush=True)
                        t0 += time.perf_counter() - scoring  # the step's time without the scoring
                    opt.zero_grad()
                    (-objective.sum()).backward()
                    opt.step()
                    stepping += time.perf_counter() - t0


if __name__ == "__main__":
    main()
