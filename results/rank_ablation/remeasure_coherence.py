"""Re-measure the fields of metrics.json that the notebook measured with the R = 25 model's batch
normalisation in training mode (the ε-rescored wrapper used to hand its own training flag to the
model): the sample coherence of each ε ≥ 1e-4 and prior_variance_sos. Everything else is unchanged.

    SOSVAE_DATA_ROOT= python results/rank_ablation/remeasure_coherence.py RUNS/portraits-quick-sos-448802f2
"""
import json
import sys
from pathlib import Path

from sosvae_core import likelihood, tradeoffs
from sosvae_core.runs import load_run
from sosvae_core.scorecard import prior_pixel_variance

path = Path(__file__).with_name("metrics.json")
metrics = json.loads(path.read_text())
sos = load_run(sys.argv[1], "cpu")
for row in metrics["eps_tradeoff"]:
    row["coherence"] = tradeoffs.sample_coherence(likelihood.WithDiagonal(sos, row["eps"]), seed=0)
metrics["prior_variance_sos"] = prior_pixel_variance(sos, 64, 0)
path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
