"""What every notebook does first: parameters → configs, data, trained models, outputs.

    ctx = setup(profile, dataset, data_root, device, output_dir, seed)
    sos = ctx.model("sos")           # trains once (01_train_models), then loads
    ctx.save(fig, "fig1_celeba")     # PNG in output_dir, shown inline
    ctx.record(coherence_sos=0.41)   # key numbers in output_dir/metrics.json

Runs are shared by all notebooks, the command line and `run_all.sh`: `runs_dir`, else
$SOSVAE_RUNS_DIR, else `runs/` in the checkout (`paths.runs_root`); decoded images and FID
statistics are cached beside them (`paths.cache_root`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import torch

from .configs import Config, get_config
from .data import dataset_args, load_splits, resolve_data_root
from .figures import record, save_figure
from .paths import ENV_DATA_ROOT, cache_root, runs_root
from .runs import get_or_train

# on the main dataset (01_train_models); the Laplace model is notebook 12's second baseline
MAIN_MODELS = ("sos", "beta", "distribution", "sos_learned_diag", "laplace")


@dataclass
class NotebookContext:
    profile: str
    dataset: str
    data_root: Optional[Path]
    device: str
    output_dir: Path
    runs_dir: Path
    cache_dir: Optional[Path]
    seed: int = 0
    _splits: Dict[str, dict] = field(default_factory=dict, repr=False)

    def config(self, model: str = "sos", dataset: Optional[str] = None, **overrides) -> Config:
        return get_config(dataset or self.dataset, self.profile, model, **overrides)

    def splits(self, dataset: Optional[str] = None) -> dict:
        """train/val/test of a dataset, decoded as the configs train on it (cached)."""
        dataset = dataset or self.dataset
        if dataset not in self._splits:
            cfg = self.config("sos", dataset)
            self._splits[dataset] = load_splits(**dataset_args(cfg), data_root=self.data_root,
                                                cache_dir=self.cache_dir, progress=False)
        return self._splits[dataset]

    def model(self, model: str = "sos", dataset: Optional[str] = None, **overrides):
        """The trained model for this profile (trained now if no run folder has it)."""
        dataset = dataset or self.dataset
        cfg = self.config(model, dataset, **overrides)
        return get_or_train(cfg, runs_dir=self.runs_dir, data_root=self.data_root, device=self.device,
                            datasets=self.splits(dataset), progress=True)

    def is_trained(self, cfg: Config) -> bool:
        """Whether the runs folder holds this config's finished run (on this data)."""
        from .runs import is_finished, run_name
        return is_finished(self.runs_dir / run_name(cfg, self.data_root))

    def planned_configs(self) -> List[Config]:
        """Every run the numbered notebooks use (07's longer ablation, asked for by its
        parameter, aside): five observation models on the main dataset, β-VAE and SOS-VAE
        on the brain slices (with a data root), β-VAE, Dorta et al. and SOS-VAE on the gray
        comparison of notebook 09, and notebook 13's runs (`beyond_the_paper_configs`)."""
        from .scorecard import gray_dataset
        plan = [(kind, self.dataset) for kind in MAIN_MODELS]
        if self.has_real_data:
            plan += [(kind, "brain") for kind in ("beta", "sos")]
        plan += [(kind, gray_dataset(self)) for kind in ("beta", "dorta", "sos")]
        configs = [self.config(kind, dataset) for kind, dataset in plan]
        return configs + self.beyond_the_paper_configs()

    def beyond_the_paper_configs(self) -> List[Config]:
        """Notebook 13's runs on the main dataset: the learned-ε model and the SOS-VAE at each rank
        of the reduced sweep (`tradeoffs.QUICK_RANKS`; the full sweep is a documented command)."""
        from .tradeoffs import QUICK_RANKS
        main_rank = self.config("sos").rank
        return [self.config("sos_learned_eps")] + [self.config("sos", rank=r) for r in QUICK_RANKS if r != main_rank]

    def train_all(self, jobs: Optional[int] = None) -> dict:
        """Train the planned runs that no run folder has yet, `jobs` at a time (default: one
        per CPU core up to 4, one on a GPU; `pool.train_all`). {run name: seconds} of those trained."""
        from .pool import train_all
        return train_all(self.planned_configs(), runs_dir=self.runs_dir, data_root=self.data_root,
                         device=self.device, jobs=jobs)

    def test_images(self, dataset: Optional[str] = None, n: Optional[int] = None) -> torch.Tensor:
        images = self.splits(dataset)["test"].to_float()
        return images if n is None else images[:n]

    def save(self, fig, name: str, show: bool = True) -> Path:
        import matplotlib.pyplot as plt
        path = save_figure(fig, self.output_dir, name)
        plt.show() if show else plt.close(fig)
        return path

    def record(self, **metrics) -> dict:
        return record(self.output_dir, **metrics)

    def caption(self, figure: str, what: str, dataset: Optional[str] = None) -> str:
        """A figure's title line: the paper figure, the dataset, the profile, and what is drawn (with N)."""
        from .table1 import DATASET_LABELS  # one name for the OASIS stand-in, as in Table 1
        name = dataset or self.dataset
        return f"{figure} · {DATASET_LABELS.get(name, name)} · {self.profile} profile · {what}"

    @property
    def has_real_data(self) -> bool:
        return self.data_root is not None


def context(profile: str = "quick", dataset: Optional[str] = None, data_root=None, device: str = "auto",
            output_dir=None, seed: int = 0, runs_dir=None) -> NotebookContext:
    """The notebooks' parameters resolved, with no side effect. dataset=None: CelebA when a
    data root is given (argument or $SOSVAE_DATA_ROOT), else the bundled synthetic portraits."""
    root = resolve_data_root(data_root)
    if root is not None and not Path(root).exists():
        raise FileNotFoundError(f"data root {root} does not exist; pass data_root=... or set {ENV_DATA_ROOT}")
    dataset = dataset or ("celeba" if root is not None else "portraits")
    runs = runs_root(runs_dir)
    return NotebookContext(profile, dataset, root, device, Path(output_dir or "outputs"), runs,
                           cache_root(runs_dir=runs), seed)


def setup(profile: str = "quick", dataset: Optional[str] = None, data_root=None, device: str = "auto",
          output_dir=None, seed: int = 0, runs_dir=None) -> NotebookContext:
    """What a notebook does first: its parameters resolved (`context`), its output folder
    made, torch seeded, and the profile and dataset recorded in its metrics."""
    ctx = context(profile, dataset, data_root, device, output_dir, seed, runs_dir)
    ctx.output_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    ctx.record(profile=profile, dataset=ctx.dataset, real_data=ctx.has_real_data)
    return ctx
