"""Table 1 for trained runs: the paper's values, the formatting, test codes and the fid command."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sosvae_core import table1


def test_posterior_codes_needs_an_encoder():
    from sosvae_core.observations import DistributionOnly

    with pytest.raises(ValueError, match="distribution model has no encoder"):
        table1.posterior_codes(DistributionOnly((1, 8, 8), rank=2), 4)


def test_fid_cli_on_a_trained_run(tmp_path, capsys, monkeypatch):
    """`python -m sosvae_core fid --run RUN`: one JSON line with the number and its protocol."""
    import json

    from sosvae_core.__main__ import main as cli
    from sosvae_core.data import load_splits
    from sosvae_core.runs import load_run

    run = tmp_path / "run"
    assert cli(["train", "--config", "lfw", "--profile", "smoke", "--run-dir", str(run), "--no-progress",
                "--set", "epochs=1", "--device", "cpu"]) == 0
    capsys.readouterr()
    assert cli(["fid", "--run", str(run), "--n", "12", "--what", "samples", "--cache-dir", str(tmp_path / "cache"),
                "--device", "cpu", "--batch-size", "12"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["fid"] > 0 and result["n"] == 12 and result["what"] == "samples"
    assert result["backend"].startswith("torchscript") and len(result["weights_sha256"]) == 64
    assert "biased upward" in result["note"]
    assert result["codes"] == "prior"
    assert list((tmp_path / "cache" / "fid").glob("*.npz")), "reference statistics were not cached"
    assert "fid_inf" not in result

    # --extrapolate adds FID∞ from subsets of the same 12 images (two sizes here, to keep the test short)
    from sosvae_core import fid
    full_fid, original = result["fid"], fid.fid_infinity
    monkeypatch.setattr(fid, "fid_infinity", lambda act, reference, seed=0: original(act, reference, ns=[6, 12],
                                                                                      repeats=1, seed=seed))
    assert cli(["fid", "--run", str(run), "--n", "12", "--what", "samples", "--cache-dir", str(tmp_path / "cache"),
                "--device", "cpu", "--batch-size", "12", "--extrapolate"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["fid"] == pytest.approx(full_fid)
    assert np.isfinite(result["fid_inf"]) and np.isfinite(result["fid_inf_slope"])
    # the line through (1/6, FID₆) and (1/12, FID₁₂) meets 1/N = 0 at 2·FID₁₂ − FID₆
    assert result["fid_inf"] == pytest.approx(full_fid - result["fid_inf_slope"] / 12)

    # the posterior means of the test images (10 of the smoke subset's 100) instead of the prior
    common = ["--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--batch-size", "8", "--what", "means"]
    assert cli(["fid", "--run", str(run), "--n", "8", "--codes", "test", *common]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["codes"] == "test" and result["n"] == 8 and result["fid"] > 0
    assert 0 <= result["reference_overlap"] <= 8
    model = load_run(run, "cpu")
    got = table1.posterior_codes(model, 8, cache_dir=tmp_path / "cache", progress=False)
    splits = load_splits("lfw", n_images=model.config.n_images, seed=model.config.split_seed,
                         cache_dir=tmp_path / "cache", progress=False)
    model.eval()
    with torch.no_grad():
        expected = model.encode(splits["test"].images[:8].float() / 255).loc
    torch.testing.assert_close(got["codes"], expected)
    assert got["reference_overlap"] == result["reference_overlap"]
    with pytest.raises(ValueError, match="holds 10 images"):
        table1.posterior_codes(model, 11, cache_dir=tmp_path / "cache", progress=False)


# Table 1 as the paper prints it (method, dataset, FID; the dataset cell is left empty
# below its first row), tab-separated as in the paper's text.
PAPER_TABLE1_TEXT = """\
β -VAE (MEANS)\tCELEBA\t121.65
β -VAE (SAMPLES)\t\t196.40
SOS-VAE (MEANS)\t\t132.93
SOS-VAE (SAMPLES)\t\t104.62
β -VAE (MEANS)\tUKBB\t211.24
β -VAE (SAMPLES)\t\t332.89
SOS-VAE (MEANS)\t\t141.87
SOS-VAE (SAMPLES)\t\t79.712
β -VAE (MEANS)\t64x64 GRAYSCALE CELEBA\t90.97
β -VAE (SAMPLES)\t\t257.11
DORTA ET AL. (MEANS)\t\t73.44
DORTA ET AL. (SAMPLES)\t\t77.72
SOS-VAE (MEANS)\t\t70.43
SOS-VAE (SAMPLES)\t\t74.66
"""


def test_paper_table1_values_are_the_papers_printed_numbers():
    datasets = {"CELEBA": "celeba", "UKBB": "brain", "64x64 GRAYSCALE CELEBA": "celeba64_gray"}
    models = {"β -VAE": "beta", "SOS-VAE": "sos", "DORTA ET AL.": "dorta"}
    parsed, dataset = {}, None
    for line in PAPER_TABLE1_TEXT.splitlines():
        method, cell, value = line.split("\t")
        dataset = datasets[cell] if cell else dataset
        name, what = method.rsplit(" (", 1)
        parsed.setdefault((dataset, models[name]), {})[what.rstrip(")")] = float(value)
    assert len(parsed) == 7 and sum(len(v) for v in parsed.values()) == 14
    assert {k: (v["MEANS"], v["SAMPLES"]) for k, v in parsed.items()} == table1.PAPER_TABLE1
    assert table1.PAPER_N == 50_000  # the caption's and Section 4.3's N


def test_format_table1_puts_the_papers_values_beside_ours_and_names_the_brain_stand_in():
    rows = [{"dataset": d, "model": k, "n": 250, "n_reference": 600, "fid_means": 200.0 + i, "fid_samples": 300.0 + i,
             "paper_means": table1.PAPER_TABLE1[(d, k)][0], "paper_samples": table1.PAPER_TABLE1[(d, k)][1],
             "kid_means": 40.0 + i, "kid_means_std": 2.04, "kid_samples": 61.25, "kid_samples_std": 3.0}
            for i, (d, k) in enumerate([("celeba", "sos"), ("brain", "beta")])]
    lines = table1.format_table1(rows).splitlines()
    assert len(lines) == 4
    assert lines[2] == "| celeba | SOS-VAE | 250 / 600 | 200.00 | 132.93 | 300.00 | 104.62 | 40.0 ± 2.0 | 61.2 ± 3.0 |"
    assert lines[3] == ("| brain: OASIS (paper: UK Biobank) | β-VAE | 250 / 600 | 201.00 | 211.24 | 301.00 | 332.89 | "
                        "41.0 ± 2.0 | 61.2 ± 3.0 |")


def test_a_damaged_fid_cache_is_named_with_its_fix(tmp_path):
    from types import SimpleNamespace

    from sosvae_core.paths import DamagedFile
    (tmp_path / "fid.json").write_text('{"means|n=5": ')
    model = SimpleNamespace(run_dir=tmp_path)
    extractor = SimpleNamespace(backend="b", weights_sha256="w")
    with pytest.raises(DamagedFile, match=r"fid.json is not valid JSON \(.*\); delete it: FID results are recomputed"):
        table1._cached_fid(model, (None, None, 5), 5, "means", extractor, 0, False)
