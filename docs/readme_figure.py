"""Draw the README's picture: Fig. 2 (β-VAE | SOS-VAE) from the bundled quick models.

    python docs/readme_figure.py [--runs-dir DIR] [--out docs/images/fig2_portraits.png]

Loads the quick-profile β-VAE and SOS-VAE on the bundled synthetic portraits from the runs
folder that `run_all.sh` fills (training them first if they are missing, a few minutes on a
CPU), decodes three prior codes (seed 0) and draws Fig. 2's six rows for both, small enough to
commit.
"""
import argparse
from pathlib import Path

from sosvae_core import figures
from sosvae_core.notebook import context


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs-dir", help="the runs folder (default: $SOSVAE_RUNS_DIR, else runs/ of the checkout)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "images" / "fig2_portraits.png"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    import matplotlib
    matplotlib.use("Agg")
    ctx = context("quick", "portraits", data_root=None, device="cpu", runs_dir=args.runs_dir)
    models = {"β-VAE": ctx.model("beta"), "SOS-VAE": ctx.model("sos")}
    panels = figures.fig2_panels(models, 3, args.seed)
    fig = figures.plot_observation_panels(panels, n_cols=3, title="Fig. 2 · bundled synthetic portraits · quick profile · "
                                                                  "3 prior codes; map rows: one scale per model")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=72, bbox_inches="tight", pil_kwargs={"optimize": True})
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
