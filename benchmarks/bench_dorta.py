"""Timings of the Dorta et al. (2018) sparse-precision observation model (not a test).

Default setting: 1×64×64 images, batch 25, stencils 3 and 5, float32 on CPU.
Prints one table: the median time per call and per image of

    log_prob + backward       one transposed conv, O(S·k²)
    rsample scipy (simple)    spsolve_triangular on the block-diagonal CSR of Lᵀ
    rsample wavefront (fast)  anti-diagonal back substitution in torch
    rsample wavefront + bwd   the same, with gradients to all parameters
    variance (exact)          block selected inversion, O(S·r²·W²)
    covariance_row            two wavefront solves
    conditional_mean          banded Cholesky of Λ_aa (a 16×16 edited patch)

and the speed-up of the fast exact sampler over the simple one.

    python benchmarks/bench_dorta.py [--batch 25] [--size 64] [--threads N] [--min-time 1]
"""
from __future__ import annotations

import argparse
import contextlib
import os

import torch
from torch.utils.benchmark import Timer

from sosvae_core.observations.dorta import SparsePrecisionNormal, num_off_diagonal


def make(C: int, H: int, W: int, k: int, B: int, requires_grad: bool = False):
    # small off-diagonal weights keep Λ well conditioned, as a trained decoder's would be
    S = C * H * W
    params = (torch.randn(B, S), 0.1 * torch.randn(B, S),
              0.1 * torch.randn(B, C, num_off_diagonal(k), H, W))
    return tuple(p.requires_grad_(requires_grad) for p in params)


def median_ms(fn, threads: int, min_time: float) -> float:
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
    return timer.blocked_autorange(min_run_time=min_time).median * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--stencils", type=int, nargs="+", default=[3, 5])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds per measurement")
    args = parser.parse_args()
    torch.manual_seed(0)
    try:  # scipy's LAPACK/BLAS has its own thread pool: give it the same count as torch
        from threadpoolctl import threadpool_limits
        blas_limit = threadpool_limits(args.threads)
    except ImportError:
        blas_limit = contextlib.nullcontext()
    with blas_limit:
        run(args)


def run(args: argparse.Namespace) -> None:
    C, H, W, B = args.channels, args.size, args.size, args.batch
    S = C * H * W
    print(f"SparsePrecisionNormal, {C}x{H}x{W} (S = {S}), batch {B}, float32, CPU, "
          f"{args.threads} thread(s), torch {torch.__version__}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    header = f"{'stencil':>7}  {'operation':<26} {'ms/call':>9} {'ms/image':>9}"
    print(header)
    print("-" * len(header))
    for k in args.stencils:
        loc, log_diag, off = make(C, H, W, k, B, requires_grad=True)
        x = torch.randn(B, S)
        mask = torch.zeros(C, H, W, dtype=torch.bool)
        mask[:, H // 2 - 8:H // 2 + 8, W // 2 - 8:W // 2 + 8] = True
        values = torch.zeros(B, int(mask.sum()))

        def dist():
            return SparsePrecisionNormal(loc, log_diag, off, (C, H, W), stencil=k)

        def log_prob_backward():
            dist().log_prob(x).sum().backward()

        def rsample_backward():
            dist().rsample().sum().backward()

        d = SparsePrecisionNormal(loc.detach(), log_diag.detach(), off.detach(), (C, H, W), stencil=k)
        ops = {
            "log_prob + backward": log_prob_backward,
            "rsample scipy (simple)": lambda: d.rsample(method="scipy"),
            "rsample wavefront (fast)": lambda: d.rsample(method="wavefront"),
            "rsample wavefront + bwd": rsample_backward,
            "variance (exact)": lambda: d.variance,
            "covariance_row": lambda: d.covariance_row(S // 2),
            "conditional_mean 16x16": lambda: d.conditional_mean(mask, values),
        }
        times = {}
        for name, fn in ops.items():
            times[name] = median_ms(fn, args.threads, args.min_time)
            print(f"{k:>7}  {name:<26} {times[name]:>9.2f} {times[name] / B:>9.3f}")
        ratio = times["rsample scipy (simple)"] / times["rsample wavefront (fast)"]
        print(f"{k:>7}  {'fast sampler speed-up':<26} {ratio:>8.1f}x")


if __name__ == "__main__":
    main()
