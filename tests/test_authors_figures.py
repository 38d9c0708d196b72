"""Claims 5 and 7's measures on the authors' kind of images: the viridis read-back, the panel
layouts, and (when $SOSVAE_AUTHORS_FIGURES points at the authors' showcase images) the
scorecard's reference numbers re-measured."""
import os

import numpy as np
import pytest

pytest.importorskip("matplotlib")
from matplotlib import colormaps  # noqa: E402
from PIL import Image  # noqa: E402

from sosvae_core import authors_figures as af, claims, scorecard as sc  # noqa: E402
from sosvae_core.paths import ENV_AUTHORS_FIGURES  # noqa: E402


def test_viridis_values_read_back_the_colour_map():
    values = np.linspace(0, 1, 256)
    colours = colormaps["viridis"](values)[:, :3]
    np.testing.assert_allclose(af.viridis_values(colours), values, atol=1 / 255 + 1e-12)
    # a colour between two entries (as after resampling) lands on one of its neighbours
    between = (colours[100] + colours[101]) / 2
    assert af.viridis_values(between[None])[0] in (100 / 255, 101 / 255)


def synthetic_figure(path, inside=0.8, outside=0.2):
    """An image with the layout of the authors' CelebA figure: in every column a skin-coloured
    ellipse on a grey background in the mean row, and Σ₊ = `inside` on the ellipse and
    `outside` elsewhere in the viridis row."""
    layout = af.LAYOUTS["celeba_results.png"]
    width, height = layout["size"]
    image = np.ones((height, width, 3))
    cmap = colormaps["viridis"]
    cols = layout["columns"]
    for left, right in zip(cols[:-1], cols[1:]):
        (t0, b0), (t1, b1) = layout["mean"], layout["cov_positive"]
        h, w = b0 - t0, right - left
        yy, xx = np.mgrid[0:h, 0:w]
        face = ((yy - h / 2) / (h / 3)) ** 2 + ((xx - w / 2) / (w / 4)) ** 2 <= 1
        image[t0:b0, left:right] = np.where(face[..., None], [0.8, 0.6, 0.5], [0.4, 0.4, 0.4])
        yy, xx = np.mgrid[0:b1 - t1, 0:w]
        face = ((yy - h / 2) / (h / 3)) ** 2 + ((xx - w / 2) / (w / 4)) ** 2 <= 1
        image[t1:b1, left:right] = cmap(np.where(face, inside, outside))[..., :3]
    Image.fromarray((image * 255).round().astype(np.uint8)).save(path)


def test_the_measure_on_a_figure_with_known_maps(tmp_path):
    synthetic_figure(tmp_path / "celeba_results.png", inside=0.8, outside=0.2)
    result = af.measure(tmp_path)["celeba_results.png"]
    assert len(result["concentrations"]) == 10
    assert result["median"] == pytest.approx((0.8 - 0.2) / (0.8 + 0.2), abs=0.02)
    synthetic_figure(tmp_path / "celeba_results.png", inside=0.5, outside=0.5)  # evenly spread
    assert abs(af.measure(tmp_path)["celeba_results.png"]["median"]) < 0.02


def test_wrong_or_missing_images_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="showcase_images"):
        af.measure(tmp_path)
    Image.new("RGB", (100, 80)).save(tmp_path / "celeba_results.png")
    with pytest.raises(ValueError, match="100×80, not the authors' 1289×831"):
        af.measure(tmp_path)


@pytest.mark.skipif(not os.environ.get(ENV_AUTHORS_FIGURES), reason=f"${ENV_AUTHORS_FIGURES} is not set")
def test_the_reference_numbers_are_what_the_authors_figures_give():
    results = af.measure(os.environ[ENV_AUTHORS_FIGURES])
    assert set(results) == {"celeba_results.png", "ukbb_results.png", "editor.png"}
    assert round(results["celeba_results.png"]["median"], 2) == sc.AUTHORS_CONCENTRATION["celeba"]
    assert round(results["ukbb_results.png"]["median"], 2) == sc.AUTHORS_CONCENTRATION["brain"]
    edits = results["editor.png"]["edits"]
    assert {k: {m: round(v, 2) for m, v in e.items()} for k, e in edits.items()} == sc.AUTHORS_EDITS
    # the authors' own models pass the rules they set
    assert all(claims.check(5, {"median_concentration": results[n]["median"]})
               for n in ("celeba_results.png", "ukbb_results.png"))
    assert claims.check(7, {"edits": edits})


def synthetic_editor(path, moved_share=0.5):
    """Four panels with the editor's layout: before/after pairs in which the left
    `moved_share` of each panel darkens by 0.3 and the rest stays, a red circle on each
    'before' panel."""
    layout = af.EDITOR
    width, height = layout["size"]
    image = np.ones((height, width, 3))
    top, bottom = layout["rows"]
    for k, (left, right) in enumerate(layout["panels"]):
        panel = np.full((bottom - top, right - left, 3), 0.6)
        if k % 2 == 1:  # 'after': the left share of the panel darkened
            panel[:, :int(moved_share * panel.shape[1])] -= 0.3
        else:  # 'before': a red ring of radius 20 at (100, 300)
            yy, xx = np.mgrid[0:panel.shape[0], 0:panel.shape[1]]
            ring = np.abs(np.hypot(yy - 100, xx - 300) - 20) < 1.5
            panel[ring] = [1.0, 0.0, 0.0]
        image[top:bottom, left:right] = panel
    Image.fromarray((image * 255).round().astype(np.uint8)).save(path)


def test_the_editor_measure_on_panels_with_a_known_change(tmp_path):
    synthetic_editor(tmp_path / "editor.png", moved_share=0.5)
    edits = af.measure(tmp_path)["editor.png"]["edits"]
    assert set(edits) == {"hair", "forehead"}
    for scores in edits.values():
        # half the panel moved by 0.3 and half stayed: the unchanged half is the unchanged fraction
        assert scores["unchanged_fraction"] == pytest.approx(0.5, abs=0.01)
        assert scores["propagation"] > 0
    synthetic_editor(tmp_path / "editor.png", moved_share=1.0)  # a global cast: nothing stays
    assert all(s["unchanged_fraction"] < 0.01 for s in af.measure(tmp_path)["editor.png"]["edits"].values())


def test_the_command_line_prints_each_image(tmp_path, capsys):
    from sosvae_core.__main__ import main
    synthetic_figure(tmp_path / "celeba_results.png", inside=0.8, outside=0.2)
    synthetic_editor(tmp_path / "editor.png", moved_share=0.5)
    assert main(["authors-figures", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "celeba_results.png: claim 5 concentration, median 0.60" in out
    assert "editor.png: claim 7 edit locality, hair: propagation" in out and "unchanged 0.50" in out
    assert main(["authors-figures", str(tmp_path / "missing")]) == 2
    assert "download them from the authors' repository" in capsys.readouterr().err
