"""What the panels show: images as PNG bytes, variance and covariance maps, the layout helpers.

An image (C, H, W) in [0, 1] is shown as a PNG in an `ipywidgets.Image`, upscaled by an
integer `zoom` with nearest neighbour so that pixels stay square. Maps of per-pixel
variances or of one pixel's covariance row (eq. 4: Σ = PPᵀ + εI) are colour-mapped, the
channels of a colour image side by side (R | G | B). Mouse positions arrive in the pixels
of the displayed PNG (`event_xy`).
"""
from __future__ import annotations

import io
import math
from typing import Optional, Sequence, Tuple

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image as PILImage

__all__ = ["default_zoom", "display_array", "png_bytes", "colormap_rgb", "event_xy"]


def default_zoom(height: int, width: int, target: int = 256) -> int:
    """Integer upscale so that the longer side is at least `target` screen pixels."""
    return max(1, math.ceil(target / max(height, width)))


def display_array(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) intensities → (H, W) gray or (H, W, C) colour uint8, clamped to [0, 1]."""
    a = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return a[0] if a.shape[0] == 1 else np.ascontiguousarray(a.transpose(1, 2, 0))


def png_bytes(array: np.ndarray, zoom: int = 1) -> bytes:
    """PNG of a uint8 image, upscaled `zoom`× with nearest neighbour (pixels stay square)."""
    im = PILImage.fromarray(array)
    if zoom > 1:
        im = im.resize((im.width * zoom, im.height * zoom), PILImage.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=1)  # fast: these PNGs live for one update
    return buf.getvalue()


def _tile_channels(values: torch.Tensor) -> torch.Tensor:
    """(C, H, W) → (H, C·W): channels side by side (R | G | B), for maps of colour images."""
    C, H, W = values.shape
    return values.permute(1, 0, 2).reshape(H, C * W)


def colormap_rgb(values: torch.Tensor, diverging: bool = False,
                 scale: Optional[float] = None) -> Tuple[np.ndarray, float]:
    """A (C, H, W) map of variances or covariances as an (H, C·W, 3) uint8 picture.

    Sequential maps (variance) use viridis on [0, max]; diverging maps (covariance) use
    RdBu_r on [−m, m] with m = max |value|, so white is zero; `scale`, if given, replaces max
    or m (to compare maps on one scale). Returns the picture and the scale for the caption.
    """
    flat = _tile_channels(values.detach().float().cpu())
    vmax = float(flat.abs().max()) if flat.numel() else 0.0
    vmax = vmax if scale is None else float(scale)
    scale = vmax if vmax > 0 else 1.0
    if diverging:
        t, cmap = (flat / scale + 1) / 2, colormaps["RdBu_r"]
    else:
        t, cmap = flat / scale, colormaps["viridis"]
    rgba = cmap(t.clamp(0, 1).numpy(), bytes=True)
    return np.ascontiguousarray(rgba[..., :3]), vmax


def _outline(array: np.ndarray, row: int, col: int, zoom: int) -> np.ndarray:
    """The upscaled picture with a red square around pixel (row, col)."""
    rgb = array if array.ndim == 3 else np.repeat(array[..., None], 3, axis=-1)
    big = np.repeat(np.repeat(rgb, zoom, axis=0), zoom, axis=1).copy()
    r0, c0 = row * zoom, col * zoom
    r1, c1 = r0 + zoom - 1, c0 + zoom - 1
    red = np.array([255, 0, 0], dtype=np.uint8)
    if zoom < 3:  # too small for an outline: colour the pixel itself
        big[r0:r1 + 1, c0:c1 + 1] = red
    else:
        big[r0, c0:c1 + 1] = big[r1, c0:c1 + 1] = red
        big[r0:r1 + 1, c0] = big[r0:r1 + 1, c1] = red
    return big


def event_xy(event: dict, width: int, height: int) -> Tuple[float, float]:
    """An ipyevents mouse event's position in the pixels of the displayed PNG (width × height).

    Taken from `relativeX`/`relativeY` and the element's bounding rectangle, not from
    ipyevents' `dataX`/`dataY`: those divide by the image's naturalWidth, which reads 0
    while the browser loads a new PNG, i.e. after every update, and a stroke then
    jumped to (0, 0). Events without a rectangle (tests) fall back to dataX/dataY.
    """
    rect_w, rect_h = event.get("boundingRectWidth"), event.get("boundingRectHeight")
    if rect_w and rect_h and "relativeX" in event:
        return event["relativeX"] * width / rect_w, event["relativeY"] * height / rect_h
    return event.get("dataX", 0), event.get("dataY", 0)


# -- layout ------------------------------------------------------------------------------

def _captioned(image: widgets.Widget, caption: str) -> widgets.VBox:
    # never shrunk by a wide neighbour: a squeezed PNG would be resampled blurry
    return widgets.VBox([widgets.HTML(f"<b>{caption}</b>"), image],
                        layout=widgets.Layout(flex="0 0 auto"))


def _row(children: Sequence[widgets.Widget]) -> widgets.HBox:
    """A row that wraps onto the next line rather than overflow a narrow output area."""
    return widgets.HBox(list(children), layout=widgets.Layout(flex_flow="row wrap"))


def _image(width: int, height: int) -> widgets.Image:
    """An Image of fixed size, so that the layout does not jump while a new PNG loads."""
    return widgets.Image(format="png", width=str(width), height=str(height))


def _button(description: str, icon: str = "") -> widgets.Button:
    return widgets.Button(description=description, icon=icon, layout=widgets.Layout(width="auto"))
