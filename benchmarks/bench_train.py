"""Training throughput of one optimisation step, and what the GPU toggles buy (not a test).

    python benchmarks/bench_train.py [--device auto] [--steps 10] [--warmup 3] [--batch-size 25]
        [--configs paper-218x178,paper-64x64,quick-54x44,quick-32x32] [--kinds sos,beta]
        [--amp] [--tf32] [--channels-last] [--compile] [--large-batch 4] [--combined] [--head-channels 16]

One step is what the Trainer does per batch: the forward pass through
`ObjectiveTerms` (networks, then the float32 likelihood), the MDMM Lagrangian of
`objective.lagrangian`, backward, the Adam step and the multiplier ascent. The
data is one random batch kept on the device, so loading is not measured.

Networks (`get_config`): paper = channels (64, 128, 256, 512), 2 blocks, latent 128,
R 25, BatchNorm; quick = (16, 32, 64), 1 block, heads see 64 maps, latent 128. Sizes: CelebA 3×218×178
and the 1×64×64 gray crop (paper), 3×54×44 and 1×32×32 (quick).

Every configuration is first measured as plain float32 eager (on CUDA with TF32 off,
which is not PyTorch's default for convolutions) and each toggle is measured next to
it in the same run; `ratio` is its images/s over that baseline's:
    --amp            bf16 autocast for the networks; the likelihood stays float32
    --tf32           TF32 matmuls and convolutions (CUDA only)
    --channels-last  NHWC model and batch
    --compile        torch.compile of the step's forward, as `--set compile=True` trains
                     (the first step, which compiles, is shown apart)
    --large-batch K  batch × K, learning rate × K (throughput only: it changes training)
    --combined       all the toggles given, at once
    --head-channels N  the observation heads see N feature maps instead of the config's
                     (quick: 64; a model change, measured here for its cost only)
Each measurement runs in a fresh process, so that peak memory is its own:
`torch.cuda.max_memory_allocated` on CUDA, the process's peak RSS on CPU (which
includes ~0.3-0.5 GB of Python and torch; `start` is the RSS before the model).

At the end: the projected wall time of the paper's CelebA run, 7,000 training images
× 100 epochs, from the paper-218x178 images/s (training steps only, no validation).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

PAPER_IMAGES = 7_000 * 100  # 70 % of 10k CelebA images, 100 epochs

# name → (experiment, profile) of sosvae_core.configs
CONFIGS = {
    "paper-218x178": ("celeba", "paper"),
    "paper-64x64": ("celeba64_gray", "paper"),
    "quick-54x44": ("celeba", "quick"),
    "quick-32x32": ("celeba64_gray", "quick"),
}


def set_tf32(on: bool) -> None:
    import torch
    precision = "tf32" if on else "ieee"
    try:
        torch.backends.cuda.matmul.fp32_precision = precision
        torch.backends.cudnn.conv.fp32_precision = precision
    except AttributeError:  # torch before the fp32_precision API
        torch.backends.cuda.matmul.allow_tf32 = on
        torch.backends.cudnn.allow_tf32 = on


def measure(job: dict) -> dict:
    """One configuration × variant, in this process: images/s and peak memory."""
    import torch

    from sosvae_core.configs import get_config
    from sosvae_core.data import output_shape
    from sosvae_core.objective import ConstraintConfig, Multipliers, ObjectiveTerms, compiled, lagrangian
    from sosvae_core.networks import build_model
    from sosvae_core.train import select_device

    if job["threads"]:
        torch.set_num_threads(job["threads"])
    device = select_device(job["device"])
    if device.type == "cuda":
        set_tf32(job["tf32"])
    experiment, profile = CONFIGS[job["config"]]
    cfg = get_config(experiment, profile, job["kind"])
    if job.get("head_channels"):
        cfg = cfg.replace(head_channels=job["head_channels"])
    shape = output_shape(cfg.dataset, cfg.image_size)
    batch = job["batch_size"] * job["batch_mult"]
    torch.manual_seed(0)
    x = torch.rand(batch, *shape, device=device)
    start_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    model = build_model(cfg, shape).to(device)
    if job["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    model.train()
    multipliers = Multipliers().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr * job["batch_mult"])
    constraints = ConstraintConfig(cfg.target_kl, cfg.target_entropy(shape), cfg.damping,
                                   cfg.multiplier_lr, cfg.one_sided_damping)
    terms = ObjectiveTerms(model, cfg.model, amp=job["amp"])  # as the Trainer's step
    forward = compiled(terms) if job["compile"] else terms

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def step():
        nll, kl, entropy, _ = forward(x)
        loss, violations = lagrangian(nll, kl, entropy, multipliers, constraints)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        multipliers.ascend(violations, constraints.multiplier_lr)
        return loss

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    loss = step()  # the first step: compilation, cuDNN/oneDNN set-up
    sync()
    first_s = time.perf_counter() - t0
    for _ in range(job["warmup"] - 1):
        step()
    sync()
    times = []  # per step: on a shared machine the median resists other processes' bursts
    for _ in range(job["steps"]):
        t0 = time.perf_counter()
        loss = step()
        sync()
        times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"step_s": times, "first_step_s": first_s, "peak_mb": peak_mb, "start_mb": start_rss, "batch": batch,
            "finite": bool(torch.isfinite(loss.detach()).item()), "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "threads": torch.get_num_threads(), "torch": torch.__version__}


def run_isolated(job: dict, timeout: float) -> dict:
    """`measure` in a fresh Python process (its own peak memory, caches and compile)."""
    try:
        done = subprocess.run([sys.executable, os.path.abspath(__file__), "--job", json.dumps(job)],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        if done.returncode < 0:
            why = f"killed by signal {-done.returncode} (out of memory?)"
        return {"error": why[:100]}
    return json.loads(lines[-1])


def variants(args, device_type: str):
    """(name, settings) of the baseline and the requested toggles."""
    base = dict(amp=False, tf32=False, channels_last=False, compile=False, batch_mult=1)
    out = [("fp32 eager", base)]
    if args.amp:
        out.append(("bf16", dict(base, amp=True)))
    if args.tf32 and device_type == "cuda":
        out.append(("tf32", dict(base, tf32=True)))
    if args.channels_last:
        out.append(("channels_last", dict(base, channels_last=True)))
    if args.compile:
        out.append(("compile", dict(base, compile=True)))
    if args.large_batch > 1:
        out.append((f"batch x{args.large_batch}", dict(base, batch_mult=args.large_batch)))
    if args.head_channels:
        out.append((f"heads see {args.head_channels} maps", dict(base, head_channels=args.head_channels)))
    if args.combined:
        on = dict(amp=args.amp, tf32=args.tf32 and device_type == "cuda",
                  channels_last=args.channels_last, compile=args.compile,
                  batch_mult=max(1, args.large_batch))
        short = dict(amp="bf16", tf32="tf32", channels_last="cl", compile="compile")
        name = "+".join(short[k] for k, v in on.items() if v and k in short)
        name += f"+batch x{args.large_batch}" if args.large_batch > 1 else ""
        out.append((name, dict(base, **on)))
    return out


def hours(seconds: float) -> str:
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (at least 1)")
    ap.add_argument("--batch-size", type=int, default=25)
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"subset of {','.join(CONFIGS)}")
    ap.add_argument("--kinds", default="sos,beta")
    ap.add_argument("--amp", action="store_true")
    ap.add_argument("--tf32", action="store_true")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--large-batch", type=int, default=1, metavar="K")
    ap.add_argument("--combined", action="store_true", help="also all requested toggles together")
    ap.add_argument("--head-channels", type=int, default=0, metavar="N",
                    help="also the network whose observation heads see N feature maps")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="measure every variant this often, interleaved (for a noisy machine)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per measurement")
    ap.add_argument("--job", help=argparse.SUPPRESS)  # internal: one measurement, JSON in and out
    args = ap.parse_args()
    if args.job:
        print(json.dumps(measure(json.loads(args.job))), flush=True)
        return

    import torch
    from sosvae_core.train import select_device
    device = select_device(args.device)
    configs = [c for c in args.configs.split(",") if c]
    unknown = set(configs) - set(CONFIGS)
    if unknown:
        ap.error(f"unknown config(s) {sorted(unknown)}; choose from {', '.join(CONFIGS)}")
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"torch {torch.__version__}, device {device}, batch {args.batch_size}, "
          f"warmup {args.warmup} + {args.steps} timed steps × {args.rounds} round(s), median step, load average {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f} on {os.cpu_count()} CPUs")
    mem = "peak MiB (CUDA allocated)" if device.type == "cuda" else "peak RSS MiB (start)"
    print(f"\n{'config':<14} {'kind':<5} {'variant':<26} {'batch':>5} {'img/s':>9} {'ms/step':>10} "
          f"{'ratio':>6} {'1st step s':>10} {mem:>22}")
    results = []
    for config in configs:
        for kind in args.kinds.split(","):
            todo = variants(args, device.type)
            runs = {name: [] for name, _ in todo}
            for _ in range(args.rounds):  # interleaved, so that a burst of load hits all alike
                for name, settings in todo:
                    job = dict(settings, config=config, kind=kind, device=str(device), steps=args.steps,
                               warmup=max(1, args.warmup), batch_size=args.batch_size, threads=args.threads)
                    runs[name].append(run_isolated(job, args.timeout))
            baseline = None
            for name, _ in todo:
                head = f"{config:<14} {kind:<5} {name:<26}"
                failed = [r["error"] for r in runs[name] if "error" in r]
                if failed:
                    print(f"{head} failed: {failed[0]}", flush=True)
                    continue
                r = dict(runs[name][-1])
                r["ms_per_step"] = 1e3 * statistics.median(t for run in runs[name] for t in run["step_s"])
                r["first_step_s"] = statistics.median(run["first_step_s"] for run in runs[name])
                r["peak_mb"] = max(run["peak_mb"] for run in runs[name])
                r["images_per_s"] = r["batch"] / (r["ms_per_step"] / 1e3)
                if name == "fp32 eager":
                    baseline = r["images_per_s"]
                ratio = r["images_per_s"] / baseline if baseline else float("nan")
                memory = (f"{r['peak_mb']:>10.0f}" if device.type == "cuda"
                          else f"{r['peak_mb']:>10.0f} ({r['start_mb']:.0f})")
                print(f"{head} {r['batch']:>5} {r['images_per_s']:>9.2f} {r['ms_per_step']:>10.1f} "
                      f"{ratio:>6.2f} {r['first_step_s']:>10.1f} {memory:>22}"
                      + ("" if r["finite"] else "  (loss not finite)"), flush=True)
                results.append((config, kind, name, r))

    paper = [(kind, name, r) for config, kind, name, r in results if config == "paper-218x178"]
    if paper:
        print(f"\nprojected paper CelebA run: {PAPER_IMAGES:,} images (7,000 × 100 epochs) on {device}")
        for kind, name, r in paper:
            print(f"  {kind:<5} {name:<26} {r['images_per_s']:8.2f} img/s  →  "
                  f"{hours(PAPER_IMAGES / r['images_per_s'])}")


if __name__ == "__main__":
    main()
