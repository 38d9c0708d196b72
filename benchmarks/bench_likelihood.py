"""Likelihood speed against torch's own LowRankMultivariateNormal (not a test).

    python benchmarks/bench_likelihood.py [--repeats 5] [--device cpu] [--baseline DIR] [--accumulate]

1. log_prob + entropy + backward for S ∈ {64², 3·64², 3·218·178}, R = 25, batch 25,
   ours (scalar ε = 1e-5, as the paper) next to torch's on the same inputs, timed in
   interleaved rounds; prints the time ratio and checks that the values agree. The
   backward returns the gradients of μ and P (torch.autograd.grad), as in training, where
   they are a head's outputs; --accumulate adds them into leaf .grad tensors instead
   (loss.backward() on leaves, one more read and write of the S×R gradient). With
   --baseline, the LowRankNormal of another checkout (e.g. `git worktree add /tmp/base
   HEAD~1`) is timed in the same rounds, so that a change is measured against its
   baseline under the same load.
2. conditional_mean at S = 3·218·178 for k = 10, 1,000 and 10,000 edited pixels,
   next to the dense k×k solve that the reference editor used (Σ₁₂ Σ₂₂⁻¹ (b − μ₂)).
Both run with argument validation off, so the comparison is of the math alone.
"""
import argparse
import importlib.util
import os
import statistics
import sys
import time

import torch
from torch.distributions import LowRankMultivariateNormal

from sosvae_core.observations import LowRankNormal
from sosvae_core.timing import median_seconds

EPS = 1e-5


def load_baseline(checkout):
    """LowRankNormal from another checkout's sosvae_core/observations, as its own package."""
    root = os.path.join(checkout, "sosvae_core", "observations")
    spec = importlib.util.spec_from_file_location("baseline_observations", os.path.join(root, "__init__.py"),
                                                  submodule_search_locations=[root])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.LowRankNormal


def interleaved_medians(fns, repeats):
    """Median seconds of each fn, timed in rounds of one call each (after one warm-up call
    each), so that a change in the machine's load touches every candidate alike."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def bench_log_prob(S, R, B, repeats, device, baseline=None, accumulate=False):
    g = torch.Generator().manual_seed(0)
    loc = (0.5 + 0.1 * torch.randn(B, S, generator=g)).to(device).requires_grad_()
    P = (0.01 * torch.randn(B, S, R, generator=g)).to(device).requires_grad_()
    x = (loc.detach() + (P.detach() @ torch.randn(B, R, 1, generator=g).to(device)).squeeze(-1)
         + 0.003 * torch.randn(B, S, generator=g).to(device))
    diag = torch.full((B, S), EPS, device=device)

    def step(make):
        def run():
            d = make()
            loss = -(d.log_prob(x) + d.entropy()).sum()
            if accumulate:
                loss.backward()  # into loc.grad and P.grad: one more read and write of S×R per call
            else:  # as in training, where μ and P are a head's outputs and their gradients flow on
                torch.autograd.grad(loss, (loc, P))
            return loss.detach()
        return run

    fns = {"ours": step(lambda: LowRankNormal(loc, P, EPS, validate_args=False)),
           "torch": step(lambda: LowRankMultivariateNormal(loc, P, diag, validate_args=False))}
    if baseline is not None:
        fns["baseline"] = step(lambda: baseline(loc, P, EPS, validate_args=False))
    a, b = float(fns["ours"]()), float(fns["torch"]())
    times = interleaved_medians(fns, repeats)
    with torch.no_grad():  # float64 reference (the formula is tested against dense MVN)
        d64 = LowRankNormal(loc.detach().double(), P.detach().double(), EPS)
        ref = float(-(d64.log_prob(x.double()) + d64.entropy()).sum())
    return times, a, b, ref


def bench_conditional_mean(S, R, ks, repeats, device):
    g = torch.Generator().manual_seed(1)
    loc = 0.5 + 0.1 * torch.randn(1, S, generator=g)
    P = 0.01 * torch.randn(1, S, R, generator=g)
    loc, P = loc.to(device), P.to(device)
    d = LowRankNormal(loc, P, EPS, validate_args=False)
    rows = []
    for k in ks:
        idx = torch.randperm(S, generator=g)[:k].to(device)
        mask = torch.zeros(S, dtype=torch.bool, device=device)
        mask[idx] = True
        values = torch.rand(1, k, generator=g).to(device)

        def ours():
            with torch.no_grad():
                return d.conditional_mean(mask, values)

        def dense():
            # the reference editor: form Σ₂₂ (k × k) and Σ₁₂ explicitly, dense solve
            with torch.no_grad():
                e = mask.nonzero().squeeze(-1)
                P2 = P[0, e]
                s22 = P2 @ P2.T + EPS * torch.eye(k, device=device)
                w = torch.linalg.solve(s22, values[0] - loc[0, e])
                out = loc[0] + P[0] @ (P2.T @ w)  # Σ₁₂ = P₁P₂ᵀ, applied without forming S×k
                out[e] = values[0]
                return out

        t_ours = median_seconds(ours, repeats)
        t_dense = median_seconds(dense, max(1, repeats if k <= 1000 else 1), warmup=0 if k > 1000 else 1)
        err = float((ours()[0] - dense()).abs().max())
        rows.append((k, t_ours, t_dense, err))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sizes", default="4096,12288,116412")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice); on a loaded "
                    "machine 2 threads stall when the second one is descheduled")
    ap.add_argument("--baseline", help="a checkout whose LowRankNormal is timed in the same rounds")
    ap.add_argument("--accumulate", action="store_true",
                    help="backward into leaf .grad tensors (adds to them) instead of returning the gradients")
    args = ap.parse_args()
    baseline = load_baseline(args.baseline) if args.baseline else None
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}, "
          f"load average {os.getloadavg()[0]:.1f}")
    into = "into leaf .grad" if args.accumulate else "returning the gradients of μ and P"
    print(f"\nlog_prob + entropy + backward ({into}), R = 25, batch 25, ε = 1e-5 (median of "
          f"{args.repeats})")
    print("loss = −Σ(log_prob + entropy) over the batch in float32; ref = the same in float64")
    base = f" {'base ms':>10} {'base ratio':>10}" if baseline else ""
    print(f"{'S':>8} {'ours ms':>10} {'torch ms':>10} {'ratio':>7}{base}  {'ours−ref':>10} {'torch−ref':>10} "
          f"{'ref':>12}")
    for S in map(int, args.sizes.split(",")):
        t, a, b, ref = bench_log_prob(S, 25, 25, args.repeats, args.device, baseline, args.accumulate)
        base = f" {t['baseline'] * 1e3:>10.1f} {t['baseline'] / t['torch']:>10.3f}" if baseline else ""
        print(f"{S:>8} {t['ours'] * 1e3:>10.1f} {t['torch'] * 1e3:>10.1f} {t['ours'] / t['torch']:>7.3f}{base}  "
              f"{a - ref:>10.3g} {b - ref:>10.3g} {ref:>12.6g}", flush=True)

    S = 3 * 218 * 178
    print(f"\nconditional_mean at S = {S}, R = 25 (median of {args.repeats}; dense k=10,000 timed once)")
    print(f"{'k':>7} {'ours ms':>10} {'dense ms':>10} {'speed-up':>9} {'max |diff|':>11}")
    for k, t_o, t_d, err in bench_conditional_mean(S, 25, (10, 1000, 10000), args.repeats, args.device):
        print(f"{k:>7} {t_o * 1e3:>10.2f} {t_d * 1e3:>10.1f} {t_d / t_o:>8.0f}x {err:>11.2e}")


if __name__ == "__main__":
    main()
