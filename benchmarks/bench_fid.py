"""Inception feature throughput for FID: memory layout and images per forward (not a test).

    python benchmarks/bench_fid.py [--n 100] [--repeats 3] [--device cpu] [--batch-sizes 1,5,10,50]

Times the FID network (the project's extractor, 299×299 input) on n generated-size
images, all in the same run: the plain contiguous layout at batch 50 (pytorch-fid's
defaults) as the baseline, then channels-last (the layout the project uses) at each
batch size. Prints images/s, the ratio to the baseline, and the largest feature
difference from it. Pass --threads 1 with a second copy running to see the side-by-side case.

Then the Fréchet distance of two 2048-feature statistics from --frechet-n images each
(singular covariances below 2048, as at the quick profile's 250): pytorch-fid's
calculate_frechet_distance (sqrtm) against the project's frechet_distance (eigh).
"""
import argparse
import statistics
import time

import torch

from sosvae_core import fid, inception


def timed(fn, repeats):
    fn()  # warm-up (TorchScript profiles its first calls)
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-sizes", default="1,5,10,50", help="comma-separated images per forward")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--frechet-n", type=int, default=250, help="images behind each Fréchet statistic")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    extractor = fid.load_feature_extractor(device=args.device)
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(args.n, 3, 54, 44, generator=g) * 255).to(torch.uint8)
    x = fid.preprocess(images).to(args.device)

    def run(net, layout, batch):
        with torch.inference_mode():
            outs = [net(x[i:i + batch].contiguous(memory_format=layout)) for i in range(0, len(x), batch)]
        outs = [o[0] if isinstance(o, (list, tuple)) else o for o in outs]
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return torch.cat([o.reshape(o.shape[0], -1) for o in outs])

    net = extractor.net
    print(f"{extractor.backend} on {args.device}, {args.n} images, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; project default batch {fid.default_batch_size(args.device)}")
    plain = net.to(memory_format=torch.contiguous_format)
    t_base, f_base = timed(lambda: run(plain, torch.contiguous_format, 50), args.repeats)
    print(f"contiguous,    batch 50  {args.n / t_base:7.2f} images/s   (baseline)")
    net = net.to(memory_format=torch.channels_last)
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        t, f = timed(lambda: run(net, torch.channels_last, batch), args.repeats)
        print(f"channels-last, batch {batch:<3d} {args.n / t:7.2f} images/s   ×{t_base / t:.2f}   "
              f"largest feature difference {float((f - f_base).abs().max()):.1e}")
    print(f"(features up to {float(f_base.abs().max()):.2f})")
    frechet(args)


def frechet(args):
    import warnings

    import numpy as np
    import threadpoolctl
    from pytorch_fid.fid_score import calculate_frechet_distance

    rng = np.random.default_rng(0)
    mix = rng.standard_normal((inception.FEATURE_DIM, inception.FEATURE_DIM)) * 0.02
    stats = []
    for shift in (0.0, 0.1):
        x = np.abs(rng.standard_normal((args.frechet_n, inception.FEATURE_DIM)) @ mix + shift)
        stats.append((x.mean(0), np.cov(x, rowvar=False)))
    with threadpoolctl.threadpool_limits(args.threads):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sqrtm warns on singular covariances
            t_ref, ref = timed(lambda: calculate_frechet_distance(*stats[0], *stats[1]), args.repeats)
        t_ours, ours = timed(lambda: fid.frechet_distance(*stats[0], *stats[1]), args.repeats)
    print(f"Fréchet distance, 2048 features from {args.frechet_n} images each:")
    print(f"pytorch-fid (sqrtm) {t_ref:6.2f} s   {ref:.6f}")
    print(f"ours (eigh)         {t_ours:6.2f} s   {ours:.6f}   ×{t_ref / t_ours:.1f}, relative difference "
          f"{abs(ours - ref) / abs(ref):.1e}")


if __name__ == "__main__":
    main()
