"""The results page (sosvae_core.report) without a browser; test_browser.py opens it in Chromium."""
import json

from sosvae_core.report import PAPER_FIGURES, build_index, paper_caption


def test_each_png_name_finds_its_paper_figure():
    assert paper_caption("fig2_celeba.png").startswith("Paper, Fig. 2:")
    assert paper_caption("fig12_one_pixel_edit.png").startswith("Paper, Fig. 12:")  # not Fig. 1
    assert paper_caption("fig8_unstabilised.png") == f"Paper, Fig. 8: {PAPER_FIGURES['8']}"
    assert paper_caption("training_curves_celeba.png").startswith("Training curves")
    assert paper_caption("quickstart_mean_vs_samples.png") == ""


def test_a_run_that_stopped_early_still_gets_a_page(tmp_path):
    (tmp_path / "00_quickstart").mkdir()
    (tmp_path / "00_quickstart.ipynb").write_text("{}")
    (tmp_path / "summary.json").write_text(json.dumps({"profile": "quick", "notebooks": [
        {"notebook": "00_quickstart.ipynb", "wall_time_s": 5.0}]}))
    page = build_index(tmp_path).read_text()
    assert "No scorecard yet" in page and "No Table 1 yet" in page
    assert '<a href="00_quickstart.ipynb">' in page and "<img" not in page


def test_names_are_escaped(tmp_path):
    (tmp_path / "02_x").mkdir()
    (tmp_path / "02_x" / "fig1_<b>.png").write_bytes(b"")
    (tmp_path / "summary.json").write_text(json.dumps({"notebooks": [{"notebook": "02_x.ipynb"}]}))
    page = build_index(tmp_path).read_text()
    assert "fig1_&lt;b&gt;" in page and "fig1_<b>" not in page
