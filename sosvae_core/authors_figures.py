"""The authors' published result images, measured with the scorecard's own measures.

The authors' repository (biomedia-mira/sos-vae, `showcase_images/`) holds

- two Fig. 2-style images drawn by their code for ten prior codes (`generate_new_results`):
  rows μ, y, y − μ, d, Σ₊ and Σ₋ (the covariance to the central pixel), each map row drawn
  with matplotlib's viridis over one scale for the whole row: `celeba_results.png` and
  `ukbb_results.png`. Reading the viridis colours back as numbers (relative to the row's
  maximum, which the measure does not need: it is a ratio) gives claim 5's covariance
  concentration on the authors' own models.
- `editor.png`: their interactive editor, four panels: before and after a small dark
  stroke on the hair (circled in red), then before and after a stroke on the forehead.
  The circle (stroke and ring) counts as the edited pixels; claim 7's edit locality of
  each before/after pair is the authors' own edit, measured.

    python -m sosvae_core authors-figures DIR      # DIR holds any of the three PNGs

The notebooks show the images beside their own figures with `published_image` when a folder
holds them (their `authors_figures` parameter, else $SOSVAE_AUTHORS_FIGURES).

The scorecard's `AUTHORS_CONCENTRATION` and `AUTHORS_EDITS` hold what this prints (rounded
to two decimals); claims 5 and 7 set their levels from them. The images are the authors'
and are not shipped here; download them from their repository.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from .scorecard import covariance_concentration, edit_locality, measured_median

# Where the panels sit in each image (pixels): the rows (top, bottom) of the mean and of Σ₊,
# the left edges of the ten columns and the right edge of the last, and the margin to skip
# inside each cell (the frame or make_grid's padding).
LAYOUTS = {
    "celeba_results.png": dict(size=(1289, 831), mean=(17, 146), cov_positive=(560, 689),
                               columns=(226, 331, 435, 540, 645, 750, 855, 960, 1065, 1169, 1274), margin=2),
    "ukbb_results.png": dict(size=(1295, 817), mean=(8, 139), cov_positive=(546, 677),
                             columns=tuple(210 + 108 * k for k in range(11)), margin=4),
}
# editor.png: the four panels' columns and rows; (before, after) panel pairs by edit
EDITOR = dict(size=(1998, 565), panels=((8, 474), (512, 978), (1017, 1483), (1521, 1987)), rows=(15, 553),
              edits={"hair": (0, 1), "forehead": (2, 3)})


def viridis_values(rgb: np.ndarray) -> np.ndarray:
    """Invert matplotlib's viridis: (..., 3) colours in [0, 1] → values in [0, 1] (nearest of 256)."""
    from matplotlib import colormaps
    table = colormaps["viridis"](np.linspace(0, 1, 256))[:, :3]
    flat = rgb.reshape(-1, 3)
    index = np.empty(len(flat), dtype=np.int64)
    for start in range(0, len(flat), 4096):  # bounded memory: 4096 × 256 distances at a time
        chunk = flat[start:start + 4096]
        index[start:start + 4096] = ((chunk[:, None, :] - table[None]) ** 2).sum(-1).argmin(1)
    return (index / 255.0).reshape(rgb.shape[:-1])


def panel_cells(image: np.ndarray, rows: Tuple[int, int], columns: Sequence[int], margin: int) -> List[np.ndarray]:
    """The cells of one panel row: (H, W, 3) crops between the column edges."""
    top, bottom = rows
    return [image[top + margin:bottom - margin, left + margin:right - margin]
            for left, right in zip(columns[:-1], columns[1:])]


def concentrations(image: np.ndarray, layout: dict) -> List[float]:
    """Claim 5's concentration for each column of one Fig. 2-style image (RGB in [0, 1])."""
    out = []
    means = panel_cells(image, layout["mean"], layout["columns"], layout["margin"])
    maps = panel_cells(image, layout["cov_positive"], layout["columns"], layout["margin"])
    for mean, cov in zip(means, maps):
        h, w = mean.shape[0] // 2, mean.shape[1] // 2
        out.append(covariance_concentration(torch.from_numpy(mean).permute(2, 0, 1),
                                            torch.from_numpy(viridis_values(cov))[None], (h, w)))
    return out


def circled(panel: np.ndarray, pad: float = 2.0) -> np.ndarray:
    """The disk inside the red circle drawn on an editor panel (H, W, 3), ring included."""
    red = (panel[..., 0] > 0.8) & (panel[..., 1] < 0.3) & (panel[..., 2] < 0.3)
    if not red.any():
        raise ValueError("no red circle marks the stroke in the editor panel; is this the authors' editor.png?")
    ys, xs = np.nonzero(red)
    cy, cx = (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2
    radius = max(ys.max() - ys.min(), xs.max() - xs.min()) / 2 + pad
    yy, xx = np.mgrid[0:panel.shape[0], 0:panel.shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2


def editor_edits(image: np.ndarray, layout: dict = EDITOR) -> Dict[str, Dict[str, float]]:
    """Claim 7's edit locality of each before/after pair of the editor image (RGB in [0, 1])."""
    top, bottom = layout["rows"]
    panels = [image[top:bottom, left:right] for left, right in layout["panels"]]
    out = {}
    for name, (before, after) in layout["edits"].items():
        mask = torch.from_numpy(circled(panels[before]))
        out[name] = edit_locality(torch.from_numpy(panels[before]).permute(2, 0, 1),
                                  torch.from_numpy(panels[after]).permute(2, 0, 1), mask)
    return out


def load_rgb(path) -> np.ndarray:
    from PIL import Image
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0


def _checked(path, size) -> np.ndarray:
    image = load_rgb(path)
    if (image.shape[1], image.shape[0]) != tuple(size):
        raise ValueError(f"{path} is {image.shape[1]}×{image.shape[0]}, not the authors' "
                         f"{size[0]}×{size[1]}; use the file from their repository")
    return image


SOURCE = "biomedia-mira/sos-vae on GitHub, folder showcase_images/ (Apache-2.0)"


def published_image(name: str, folder=None):
    """One of the authors' images for a notebook to display beside its own figure: an
    IPython image when `folder` (else $SOSVAE_AUTHORS_FIGURES) holds it, otherwise a line
    saying where to get it. The image is shown, never copied into the outputs."""
    import os

    from IPython.display import Image, Markdown

    from .paths import ENV_AUTHORS_FIGURES
    folder = folder or os.environ.get(ENV_AUTHORS_FIGURES)
    path = Path(folder) / name if folder else None
    if path is not None and path.is_file():
        return Image(filename=str(path))
    where = f"not in {folder}" if folder else f"no folder given (parameter `authors_figures` or ${ENV_AUTHORS_FIGURES})"
    return Markdown(f"*The authors' `{name}`: {where}. Get it from {SOURCE}.*")


def measure(folder) -> Dict[str, dict]:
    """Every known image in `folder`: for the Fig. 2-style ones {"concentrations": [...],
    "median": m}, for the editor {"edits": {name: {"propagation", "unchanged_fraction"}}}."""
    folder = Path(folder)
    names = sorted(LAYOUTS) + ["editor.png"]
    found = {name: folder / name for name in names if (folder / name).is_file()}
    if not found:
        raise FileNotFoundError(f"none of {names} in {folder}; download them from the authors' "
                                "repository (biomedia-mira/sos-vae, showcase_images/)")
    results = {}
    for name, path in found.items():
        if name == "editor.png":
            results[name] = {"edits": editor_edits(_checked(path, EDITOR["size"]))}
            continue
        layout = LAYOUTS[name]
        values = concentrations(_checked(path, layout["size"]), layout)
        results[name] = {"concentrations": values, "median": measured_median(values)}
    return results
