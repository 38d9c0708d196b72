"""Live widgets for exploring a trained SOS-VAE in Jupyter (JupyterLab, Notebook, Voilà).

Four panels, each an object whose `.widget` is an ipywidgets container; a panel
displays itself as that widget (`display(panel)`, or a panel as a cell's last line):

    ComponentPanel  scale the principal components of P (eq. 5, Fig. 5) with sliders;
    SlerpPanel      bilinear slerp between four ω_p samples (eq. 8, Fig. 4, Appendix D);
    LatentPanel     z from the prior or an encoded image → mean, a sample, the per-pixel
                    variance and the covariance of a clicked pixel (eq. 4, Figs. 1–2);
    EditPanel       paint strokes; the conditional mean given all strokes so far is shown
                    next to them (eqs. 6–7, sequential edits as in Fig. 6).

One module per panel (`components`, `slerp_grid`, `latent`, `edit`), on `base` (z → p(y | z),
the controls and mouse events every panel shares) and `rendering` (PNGs, colour maps, layout).

The math lives in plain methods (`set_z`, `set_scales`, `apply_stroke`, `select_pixel`,
`mouse_down`, ...) that the widget callbacks call, so tests drive the panels without a
browser; each panel keeps the array it last rendered as `current_image` ((C, H, W), clamped
to [0, 1]). `sosvae_core.timing.measure_latency` times the callbacks through those methods.

Only standard ipywidgets and ipyevents are used, no hand-written JavaScript: images are
PNG bytes in an `ipywidgets.Image` (nearest-neighbour upscaled by an integer `zoom`), and
mouse input on an image comes from an `ipyevents.Event` (see `event_xy` for the
coordinates). An Image's bytes are synced widget state, so a page
that (re)connects later, or Voilà rendering the executed notebook, shows the current
picture; ipycanvas draw commands, by contrast, are lost for clients that were not there.

Per update the panels do O(S·R) work (an edit O(k·R² + S·R) for k painted values): the
decoder, the principal components and the base sample run once per z or ω, never per
slider tick, and callbacks run on one torch thread (`base._one_thread`).
"""
from __future__ import annotations

from . import base, components, edit, latent, rendering, slerp_grid
from ..timing import measure_latency  # noqa: F401  (its home is timing; notebooks may import it from here)
from .components import ComponentPanel
from .edit import EditPanel
from .latent import LatentPanel
from .rendering import colormap_rgb, default_zoom, display_array, event_xy, png_bytes
from .slerp_grid import SlerpPanel

__all__ = [
    "rendering", "base", "components", "slerp_grid", "latent", "edit",  # the modules (the API reference documents each)
    "ComponentPanel",
    "SlerpPanel",
    "LatentPanel",
    "EditPanel",
    "default_zoom",
    "display_array",
    "png_bytes",
    "colormap_rgb",
    "event_xy",
]
