"""Callback latency of the widget panels (not a test).

    python benchmarks/bench_widgets.py [--repeats 7] [--shapes 1x64x64 3x218x178] [--json out.json]

For each image shape, a randomly initialised, untrained `VAE(shape, 'sos')` of the
default (paper) size: channels 64–512, 2 blocks per level, latent 128, rank 25. Each
time is one Python callback, from the new control value (or mouse event) to the new
PNG bytes on the Image widget (see `sosvae_core.timing.measure_latency`); the
browser's transfer and drawing are not included. Weights do not change the cost, so
untrained networks suffice. Runs on the CPU.
"""
import argparse
import json
import time

import torch

from sosvae_core.networks import VAE
from sosvae_core.timing import measure_latency

ROWS = [
    ("component_slider", "component slider tick → PNG"),
    ("slerp_slider", "slerp tx tick → PNG"),
    ("latent_click", "click on pixel → covariance map PNG"),
    ("edit_stroke_up", "mouse-up → conditional mean PNG"),
    ("edit_stroke_all", "whole 10-point stroke (live preview)"),
    ("edit_undo", "undo → conditional mean PNG"),
    ("new_z", "new z: decode + factorise P"),
]


def parse_shape(text: str):
    return tuple(int(v) for v in text.lower().split("x"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--shapes", nargs="+", default=["1x64x64", "3x218x178"])
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args()
    torch.manual_seed(0)
    report = {"torch_threads": torch.get_num_threads(), "shapes": {}}
    for text in args.shapes:
        shape = parse_shape(text)
        t0 = time.perf_counter()
        model = VAE(shape, "sos").eval()
        build_s = time.perf_counter() - t0
        n_params = sum(p.numel() for p in model.parameters())
        result = measure_latency(model, repeats=args.repeats)
        result.update(build_s=round(build_s, 2), parameters=n_params)
        report["shapes"][text] = result
        print(f"\nVAE({shape}, 'sos'), default size: {n_params / 1e6:.1f} M parameters, built in "
              f"{build_s:.1f} s; rank {result['rank']}, display zoom {result['zoom']}×")
        for key, label in ROWS:
            r = result[key]
            print(f"  {label:<40s} median {r['median_ms']:9.2f} ms   "
                  f"max {r['max_ms']:9.2f} ms   (n={r['n']})")
        print(f"  ({result['edited_pixels_at_end']} pixels edited after the last stroke)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
