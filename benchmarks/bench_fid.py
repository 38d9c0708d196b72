"""Inception feature throughput for FID, contiguous against channels-last (not a test).

    python benchmarks/bench_fid.py [--n 100] [--repeats 3] [--device cpu]

Times the FID network (the project's extractor, 299×299 input) on n generated-size
images, in the memory layout the project uses (channels-last) and in the plain
contiguous layout, in the same run; prints images/s, the ratio, and the largest
feature difference between the two layouts.
"""
import argparse
import statistics
import time

import torch

from sosvae_core import fid


def timed(fn, repeats):
    fn()  # warm-up
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
    args = ap.parse_args()
    extractor = fid.load_feature_extractor(device=args.device)
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(args.n, 3, 54, 44, generator=g) * 255).to(torch.uint8)
    x = fid.preprocess(images).to(args.device)

    def run(net, layout):
        with torch.inference_mode():
            outs = [net(x[i:i + 50].contiguous(memory_format=layout)) for i in range(0, len(x), 50)]
        outs = [o[0] if isinstance(o, (list, tuple)) else o for o in outs]
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return torch.cat([o.reshape(o.shape[0], -1) for o in outs])

    t_cl, f_cl = timed(lambda: run(extractor.net, torch.channels_last), args.repeats)
    plain = extractor.net.to(memory_format=torch.contiguous_format)
    t_plain, f_plain = timed(lambda: run(plain, torch.contiguous_format), args.repeats)
    print(f"{extractor.backend} on {args.device}, {args.n} images, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"contiguous     {args.n / t_plain:7.1f} images/s")
    print(f"channels-last  {args.n / t_cl:7.1f} images/s   ×{t_plain / t_cl:.2f}")
    print(f"largest feature difference {float((f_cl - f_plain).abs().max()):.2e} "
          f"(features up to {float(f_plain.abs().max()):.2f})")


if __name__ == "__main__":
    main()
