"""Command line: `python -m sosvae_core train|pack|fid|nll|authors-figures ...` (also `sosvae`, and under torchrun)."""
from __future__ import annotations

import argparse
import ast
import os
import sys
from pathlib import Path

from .configs import EXPERIMENTS, PROFILES, experiment_names
from .observations import REGISTRY


def _parse_overrides(pairs):
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"--set takes key=value, got '{pair}'")
        key, value = pair.split("=", 1)
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def _resumed_config(args):
    """The config of the run folder `--resume` names, with the `--set` overrides that may change
    on resume (checkpoints.RESUMABLE_FIELDS); any other override, or --config/--model/--profile/--run-dir,
    is refused by name."""
    from .runs import run_config
    from .checkpoints import RESUMABLE_FIELDS, config_differences

    given = [f"--{flag.replace('_', '-')}" for flag in ("config", "model", "profile", "run_dir")
             if getattr(args, flag) is not None]
    if given:
        it = "them" if len(given) > 1 else "it"
        raise ValueError(f"{', '.join(given)} cannot go with --resume: the run folder decides {it}; leave {it} "
                         f"out, or train a new run without --resume")
    saved = run_config(args.resume)
    cfg = saved.replace(**_parse_overrides(args.set))
    fixed = config_differences(saved, cfg)
    if fixed:
        raise ValueError(f"--resume cannot change what the run trains ({fixed}); only "
                         f"{', '.join(RESUMABLE_FIELDS)} may change: train a new run with --config … --set "
                         f"instead")
    return cfg


def cmd_train(args) -> int:
    import torch.distributed as dist

    from .configs import get_config
    from .paths import cache_root, runs_root
    from .runs import run_name
    from .train import Trainer

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:  # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR, ...
        import torch
        backend = "nccl" if torch.cuda.is_available() and args.device != "cpu" else "gloo"
        dist.init_process_group(backend)
        if backend == "nccl":
            local = int(os.environ.get("LOCAL_RANK", 0))
            torch.cuda.set_device(local)
            args.device = f"cuda:{local}"
    try:
        if args.resume:
            run_dir = Path(args.resume)
            cfg = _resumed_config(args)
        else:
            if not args.config:
                raise ValueError(f"give --config NAME ({', '.join(EXPERIMENTS)}) or --resume RUN")
            cfg = get_config(args.config, args.profile or "quick", args.model or "sos", **_parse_overrides(args.set))
            run_dir = (Path(args.run_dir) if args.run_dir else
                       runs_root(args.runs_dir) / run_name(cfg, args.data_root))
        if not distributed or dist.get_rank() == 0:
            print(f"run folder: {run_dir}", flush=True)
        trainer = Trainer(cfg, run_dir, data_root=args.data_root, device=args.device,
                          progress=not args.no_progress, cache_dir=cache_root(args.cache_dir, args.runs_dir))
        trainer.fit(max_steps=args.max_steps, wait=args.wait)
        if trainer.is_main:
            state = "stopped at" if args.max_steps and trainer.epoch < cfg.epochs else "finished:"
            print(f"{state} epoch {trainer.epoch}, step {trainer.step}, "
                  f"{trainer.wall_time:.1f} s of training", flush=True)
    finally:
        if distributed:
            dist.destroy_process_group()
    return 0


def cmd_pack(args) -> int:
    from .configs import get_config
    from .data import dataset_args, pack_dataset

    cfg = get_config(args.config, args.profile, **_parse_overrides(args.set))
    out = pack_dataset(out=args.out, data_root=args.data_root, **dataset_args(cfg))
    print(f"packed {cfg.dataset} ({cfg.n_images} images, seed {cfg.split_seed}) into {out} "
          f"({out.stat().st_size / 2**20:.1f} MiB); use it as --data-root")
    return 0


def cmd_fid(args) -> int:
    from .table1 import fid_cli
    return fid_cli(args)


def cmd_nll(args) -> int:
    from .likelihood import nll_cli
    return nll_cli(args)


def cmd_authors_figures(args) -> int:
    from .authors_figures import measure
    for name, result in measure(args.folder).items():
        if "edits" in result:
            edits = "; ".join(f"{k}: propagation {v['propagation']:.2f}, unchanged {v['unchanged_fraction']:.2f}"
                              for k, v in result["edits"].items())
            print(f"{name}: claim 7 edit locality, {edits}")
            continue
        values = ", ".join(f"{v:.2f}" for v in result["concentrations"])
        print(f"{name}: claim 5 concentration, median {result['median']:.2f} over its columns ({values})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m sosvae_core", description="SOS-VAE reference implementation")
    sub = ap.add_subparsers(dest="command", required=True)
    for add_command in (_add_train, _add_pack, _add_fid, _add_nll, _add_authors_figures):
        add_command(sub)
    return ap


def _add_train(sub) -> None:
    t = sub.add_parser("train", help="train (or resume) a model")
    # no argparse choices: an unknown name is get_config's one-line error, which lists the experiments
    t.add_argument("--config", help=f"experiment: {experiment_names()}")
    t.add_argument("--profile", choices=PROFILES, help="default: quick")
    t.add_argument("--model", choices=list(REGISTRY), help="default: sos")
    t.add_argument("--data-root", help="dataset folder (default: $SOSVAE_DATA_ROOT)")
    t.add_argument("--resume", metavar="RUN", help="continue the run in this folder (--set may change epochs and "
                                                   "the runtime-only fields)")
    t.add_argument("--wait", action="store_true", help="when another process is writing the run folder, wait for "
                                                       "it instead of stopping")
    t.add_argument("--runs-dir", help="parent of run folders, shared with run_all.sh and the notebooks "
                                      "(default: $SOSVAE_RUNS_DIR, else runs/ of the checkout)")
    t.add_argument("--cache-dir", help="decoded-image cache (default: $SOSVAE_CACHE_DIR, else cache/ beside the runs)")
    t.add_argument("--run-dir", help="exact run folder (default: derived from the config)")
    t.add_argument("--device", default="auto")
    t.add_argument("--max-steps", type=int, help="stop (checkpointed) after this many steps in all")
    t.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="override config fields, e.g. epochs=3 lr=2e-4")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=cmd_train)


def _add_pack(sub) -> None:
    p = sub.add_parser("pack", help="write a config's decoded image subset as one file (a data root for remote GPUs)")
    p.add_argument("--config", required=True, help=f"experiment: {experiment_names()}")
    p.add_argument("--profile", default="paper", choices=PROFILES)
    p.add_argument("--data-root")
    p.add_argument("--out", required=True)
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_pack)


def _add_fid(sub) -> None:
    f = sub.add_parser("fid", help="FID of a trained run's means or samples")
    f.add_argument("--run", required=True, help="run folder")
    f.add_argument("--n", type=int, default=None, help="number of generated images (default: the config's fid_n)")
    f.add_argument("--what", default="samples", choices=["means", "samples"])
    f.add_argument("--codes", default="prior", choices=["prior", "test"],
                   help="decode z from the prior (Table 1), or the posterior means of the first N test images, "
                        "which separates decoding real images' codes from decoding prior codes")
    f.add_argument("--extrapolate", action="store_true",
                   help="also FID∞: FID over subsets of the N images, extrapolated to N = ∞ (Chong & Forsyth 2020)")
    f.add_argument("--data-root", help="dataset folder for the reference statistics")
    f.add_argument("--weights", help="Inception weights file (default: $SOSVAE_FID_WEIGHTS, then the search order)")
    f.add_argument("--device", default="auto")
    f.add_argument("--batch-size", type=int, default=None,
                   help="images per Inception forward (default: 5 on a CPU, 50 on a GPU)")
    f.add_argument("--cache-dir", help="cached reference statistics (default: $SOSVAE_CACHE_DIR, else cache/ beside "
                                       "the runs)")
    f.set_defaults(func=cmd_fid)


def _add_nll(sub) -> None:
    n = sub.add_parser("nll", help="test log-likelihood of a trained run in bits per dimension (importance-weighted "
                                   "bound on dequantised test images)")
    n.add_argument("--run", required=True, help="run folder")
    n.add_argument("--k", type=int, default=1000, help="codes per image for the bound (1: the ELBO; default 1000)")
    n.add_argument("--n", type=int, default=None, help="test images (default: the whole test split)")
    n.add_argument("--eps", type=float, default=None, help="re-score a low-rank model with this fixed diagonal "
                                                           "instead of its trained ε")
    n.add_argument("--seed", type=int, default=0)
    n.add_argument("--batch-size", type=int, default=8, help="test images per batch (each decodes K codes)")
    n.add_argument("--compile", action="store_true", help="decode through the decoder compiled for evaluation "
                   "(torch.compile with frozen weights): equal to float32 rounding, about 1.4x faster in all on a CPU")
    n.add_argument("--data-root", help="dataset folder (default: $SOSVAE_DATA_ROOT)")
    n.add_argument("--device", default="auto")
    n.add_argument("--cache-dir", help="decoded-image cache (default: $SOSVAE_CACHE_DIR, else cache/ beside the runs)")
    n.set_defaults(func=cmd_nll)


def _add_authors_figures(sub) -> None:
    a = sub.add_parser("authors-figures", help="claims 5 and 7's measures on the authors' published images")
    a.add_argument("folder", help="folder holding celeba_results.png, ukbb_results.png and/or editor.png from "
                                  "the authors' repository (showcase_images/)")
    a.set_defaults(func=cmd_authors_figures)


def main(argv=None) -> int:
    from .paths import os_error_message

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted; resume with --resume RUN", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a disk full, a read-only folder: the path and the fix, not a traceback
        print(f"error: {os_error_message(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
