"""Live widgets for exploring a trained SOS-VAE in Jupyter (JupyterLab, Notebook, Voilà).

Four panels, each an object whose `.widget` is an ipywidgets container; a panel
displays itself as that widget (`display(panel)`, or a panel as a cell's last line):

    ComponentPanel  scale the principal components of P (eq. 5, Fig. 5) with sliders;
    SlerpPanel      bilinear slerp between four ω_p samples (eq. 8, Fig. 4, Appendix D);
    LatentPanel     z from the prior or an encoded image → mean, a sample, the per-pixel
                    variance and the covariance of a clicked pixel (eq. 4, Figs. 1–2);
    EditPanel       paint strokes; the conditional mean given all strokes so far is shown
                    next to them (eqs. 6–7, sequential edits as in Fig. 6).

The math lives in plain methods (`set_scales`, `apply_stroke`, `select_pixel`, ...) that
the widget callbacks call, so tests drive the panels without a browser; each panel keeps
the array it last rendered as `current_image` ((C, H, W), clamped to [0, 1]).

Only standard ipywidgets and ipyevents are used, no hand-written JavaScript: images are
PNG bytes in an `ipywidgets.Image` (nearest-neighbour upscaled by an integer `zoom`), and
mouse input on an image comes from an `ipyevents.Event` (see `event_xy` for the
coordinates). An Image's bytes are synced widget state, so a page
that (re)connects later, or Voilà rendering the executed notebook, shows the current
picture; ipycanvas draw commands, by contrast, are lost for clients that were not there.

Per update the panels do O(S·R) work (an edit O(k·R² + S·R) for k painted values): the
decoder, the principal components and the base sample run once per z or ω, never per
slider tick, and callbacks run on one torch thread (see `_one_thread`).
"""
from __future__ import annotations

import functools
import io
import math
import statistics
import time
from contextlib import contextmanager
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

import ipywidgets as widgets
import numpy as np
import torch
from ipyevents import Event
from matplotlib import colormaps
from PIL import Image as PILImage

from .observations import LowRankNormal, ObservationDistribution
from .slerp import slerp
from .data import to_float
from .editing import COMPONENT_FLOOR, PAPER_EDIT_SCALE, colour_to_values, floor_scales, stroke_mask
from .networks import model_device

__all__ = [
    "ComponentPanel",
    "SlerpPanel",
    "LatentPanel",
    "EditPanel",
    "default_zoom",
    "display_array",
    "png_bytes",
    "colormap_rgb",
    "event_xy",
    "measure_latency",
]

Colour = Union[str, Sequence[float]]
Points = Sequence[Tuple[float, float]]
Distribution = ObservationDistribution

# ITU-R BT.601 luma weights, the same as PIL's convert("L")


# -- rendering --------------------------------------------------------------------------

def _one_thread(update: Callable) -> Callable:
    """Run a widget callback on one torch thread, then restore the thread count.

    The work per update is O(S·R) elementwise ops and mat-vecs. Waking torch's intra-op
    threads for them costs more than it saves, and on a busy CPU every wake-up can wait
    for a scheduler tick (benchmarks/README.md, "The widgets"). Decoding on a GPU is
    unaffected.
    """
    @functools.wraps(update)
    def wrapper(*args, **kwargs):
        threads = torch.get_num_threads()
        if threads == 1:
            return update(*args, **kwargs)
        torch.set_num_threads(1)
        try:
            return update(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)
    return wrapper


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


def _button(description: str, icon: str = "") -> widgets.Button:
    return widgets.Button(description=description, icon=icon, layout=widgets.Layout(width="auto"))


# -- models and distributions ------------------------------------------------------------

def _single(dist: Distribution) -> Distribution:
    """The first image of a batch, unbatched, detached, float32 on the CPU (cheap updates)."""
    if not isinstance(dist, ObservationDistribution):
        raise TypeError(f"the panels need an observation distribution (sosvae_core.observations), "
                        f"got {type(dist).__name__}")
    try:
        return dist.first()
    except NotImplementedError as e:
        raise TypeError(str(e)) from None


class _Source:
    """A model decoded at z, or one fixed distribution; knows the image shape."""

    def __init__(self, model_or_distribution, image_shape: Optional[Sequence[int]] = None):
        if isinstance(model_or_distribution, ObservationDistribution):
            self.model = None
            self.fixed = _single(model_or_distribution)
            S = self.fixed.loc.shape[-1]
            if image_shape is None:
                side = math.isqrt(S)
                if side * side != S:
                    raise ValueError(f"cannot guess the image shape of S = {S} pixels; "
                                     f"pass image_shape=(C, H, W)")
                image_shape = (1, side, side)
            if math.prod(image_shape) != S:
                raise ValueError(f"image_shape {tuple(image_shape)} has {math.prod(image_shape)} "
                                 f"pixels but the distribution has S = {S}")
        else:
            self.model = model_or_distribution
            self.fixed = None
            image_shape = image_shape or model_or_distribution.image_shape
            self.model.eval()  # BatchNorm must use its running statistics for one image
        self.image_shape = tuple(int(v) for v in image_shape)

    @property
    def latent_dim(self) -> int:
        return 0 if self.model is None else int(getattr(self.model, "latent_dim", 0))

    def prior_z(self, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(1, self.latent_dim, generator=generator)

    @torch.no_grad()
    @_one_thread
    def decode(self, z: Optional[torch.Tensor]) -> Distribution:
        if self.model is None:
            return self.fixed
        device = model_device(self.model)
        z = torch.as_tensor(z, dtype=torch.float32).reshape(1, -1).to(device)
        return _single(self.model.decode(z))


def _low_rank(dist: Distribution, panel: str) -> LowRankNormal:
    if not isinstance(dist, LowRankNormal):
        raise TypeError(f"{panel} needs the low-rank (SOS-VAE) observation model; a "
                        f"{type(dist).__name__} has no ω_p / cov_factor")
    return dist


class _Panel:
    """Shared plumbing: the widget, display, timing and a guard against callback storms."""

    widget: widgets.Box
    current_image: torch.Tensor

    def __init__(self, model_or_distribution, image_shape, seed: int, zoom: Optional[int]):
        self.source = _Source(model_or_distribution, image_shape)
        self.image_shape = self.source.image_shape
        C, H, W = self.image_shape
        self.zoom = int(zoom or default_zoom(H, W))
        self.display_size = (W * self.zoom, H * self.zoom)  # the PNG's (width, height)
        self.generator = torch.Generator().manual_seed(seed)
        self.status = widgets.HTML()
        self.last_update_ms = float("nan")
        self._holding = 0

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    @contextmanager
    def _hold(self) -> Iterator[None]:
        """Set several controls without rendering after each; render once afterwards."""
        self._holding += 1
        try:
            yield
        finally:
            self._holding -= 1

    def _png(self, image: torch.Tensor, zoom: Optional[int] = None) -> bytes:
        return png_bytes(display_array(image), zoom or self.zoom)

    def _map_zoom(self) -> int:
        """The upscale of a map that shows the channels side by side (`colormap_rgb`)."""
        C, H, W = self.image_shape
        return default_zoom(H, C * W)

    def _new_z_button(self, callback: Callable[[], None]) -> List[widgets.Button]:
        """["new z from prior"], or [] for a fixed distribution (no latent to redraw)."""
        self.new_z_button = None
        if self.source.latent_dim == 0:
            return []
        self.new_z_button = _button("new z from prior", "refresh")
        self.new_z_button.on_click(lambda _: callback())
        return [self.new_z_button]

    def _timed(self, start: float, note: str = "") -> None:
        self.last_update_ms = (time.perf_counter() - start) * 1e3
        self.status.value = f"<small>update {self.last_update_ms:.1f} ms{note}</small>"


def _as_z(z) -> Optional[torch.Tensor]:
    return None if z is None else torch.as_tensor(z, dtype=torch.float32).reshape(1, -1)


# -- 1. principal components (eq. 5) -----------------------------------------------------

class ComponentPanel(_Panel):
    """Scale the principal components of the covariance factor P (eq. 5, Fig. 5).

    With the SVD P = U diag(s) Vᵀ (sorted by s, largest first), slider i sets a_i in
    P' = U diag(s·a) Vᵀ, and the image is the sample y = μ + P' ω_p + √ε ω_d for fixed
    ω_p, ω_d ("resample ω" draws new ones). Slider range −5..5, step 0.1.

    Untouched sliders stay at 1, so that the untouched image is the ordinary sample
    μ + P ω_p + √ε ω_d. (The paper's code instead sets the untouched components to 0.03,
    which nearly removes them, so that the moved component is seen almost on its own; set
    the other sliders near 0 for that view.)

    Args:
        model_or_distribution: a trained VAE (decoded at z; it is put in eval mode) or a
            LowRankNormal (batched: the first image is used).
        z: latent (latent_dim,) or (1, latent_dim); None draws one from the prior.
        image_shape: (C, H, W), needed for a bare distribution that is not square gray.
        seed: seeds z (when None) and ω.
        zoom: integer upscale for display; default brings the longer side to ≥ 256 px.
    """

    def __init__(self, model_or_distribution, z=None, *, image_shape=None, seed: int = 0,
                 zoom: Optional[int] = None):
        super().__init__(model_or_distribution, image_shape, seed, zoom)
        self._decode(z)  # first: the rank sets the number of sliders
        rank = self.distribution.rank
        self.sliders = [
            widgets.FloatSlider(value=1.0, min=-5.0, max=5.0, step=0.1, description=f"PC {i + 1}",
                                readout_format=".1f", continuous_update=True,
                                style={"description_width": "40px"},
                                layout=widgets.Layout(width="250px"))
            for i in range(rank)
        ]
        for slider in self.sliders:
            slider.observe(self._on_slider, names="value")
        self.image = _image(*self.display_size)
        self.image.add_class("sosvae-component-image")
        self.resample_button = _button("resample ω", "random")
        self.resample_button.on_click(lambda _: self.resample())
        self.reset_button = _button("all scales = 1")
        self.reset_button.on_click(lambda _: self.set_scales(torch.ones(rank)))
        buttons = _row([self.resample_button, self.reset_button,
                        *self._new_z_button(lambda: self.set_z(None))])
        grid = widgets.GridBox(self.sliders, layout=widgets.Layout(
            grid_template_columns="repeat(auto-fill, 260px)"))
        self.widget = widgets.VBox([
            widgets.HTML("<h4>Principal components of the covariance (eq. 5, Fig. 5)</h4>"),
            _row([_captioned(self.image, "sample μ + P'ω_p + √ε ω_d"),
                  widgets.VBox([buttons, grid],
                               layout=widgets.Layout(flex="1 1 0px", min_width="270px"))]),
            self.status])
        self.widget.add_class("sosvae-component-panel")
        self._factorise()

    @property
    def scales(self) -> torch.Tensor:
        return torch.tensor([s.value for s in self.sliders], dtype=torch.float32)

    def set_z(self, z=None) -> None:
        """Decode z (None: from the prior), factorise P once, draw ω and render."""
        self._decode(z)
        self._factorise()

    def _decode(self, z) -> None:
        self.z = _as_z(z) if z is not None else self.source.prior_z(self.generator)
        self.distribution = _low_rank(self.source.decode(self.z), "ComponentPanel")

    @_one_thread
    def _factorise(self) -> None:
        self.U, self.s, self.V = self.distribution.principal_components()
        self.resample()

    @_one_thread
    def resample(self) -> None:
        """New ω_p ~ N(0, I_R) and ω_d ~ N(0, I_S); the scales stay."""
        d = self.distribution
        self.omega_p = torch.randn(d.rank, generator=self.generator)
        self.omega_d = torch.randn(d.loc.shape[-1], generator=self.generator)
        # μ + √ε ω_d, and Vᵀω_p: what is left per tick is U·(s·a·Vᵀω_p), O(S·R)
        self._base = d.rsample(omega_p=torch.zeros(d.rank), omega_d=self.omega_d)
        self._coeffs = self.V.mT @ self.omega_p
        self.render()

    def set_scales(self, scales) -> None:
        """Set every slider (a_1..a_R, largest component first), then render once."""
        scales = torch.as_tensor(scales, dtype=torch.float32).reshape(-1)
        if scales.numel() != len(self.sliders):
            raise ValueError(f"expected {len(self.sliders)} scales, got {scales.numel()}")
        with self._hold():
            for slider, a in zip(self.sliders, scales.tolist()):
                slider.value = a
        self.render()

    def sample(self) -> torch.Tensor:
        """y = μ + P'ω_p + √ε ω_d (flat, unclamped) for the current scales."""
        return self._base + self.U @ (self.s * self.scales * self._coeffs)

    @_one_thread
    def render(self) -> None:
        t0 = time.perf_counter()
        self.current_image = self.sample().clamp(0, 1).reshape(self.image_shape)
        self.image.value = self._png(self.current_image)
        self._timed(t0)

    def _on_slider(self, change) -> None:
        if not self._holding:
            self.render()


# -- 2. slerp grid (eq. 8, Appendix D) -----------------------------------------------------

class SlerpPanel(_Panel):
    """Spherical interpolation between four ω_p samples (eq. 8, Fig. 4, Appendix D).

    Four corner draws ω_tl, ω_tr, ω_bl, ω_br ~ N(0, I_R) ("new corners" redraws them and
    ω_d); sliders tx, ty ∈ [0, 1] pick
        ω_p = slerp(slerp(ω_tl, ω_tr; tx), slerp(ω_bl, ω_br; tx); ty),
    the paper's bilinear slerp grid (Fig. 4), and the image is μ + P ω_p + √ε ω_d. The corners are
    shown small; (tx, ty) = (0, 0) is the top-left one. Arguments as for ComponentPanel.
    """

    CORNERS = ("top left", "top right", "bottom left", "bottom right")

    def __init__(self, model_or_distribution, z=None, *, image_shape=None, seed: int = 0,
                 zoom: Optional[int] = None):
        super().__init__(model_or_distribution, image_shape, seed, zoom)
        self.tx = widgets.FloatSlider(value=0.0, min=0.0, max=1.0, step=0.01, description="tx",
                                      continuous_update=True)
        self.ty = widgets.FloatSlider(value=0.0, min=0.0, max=1.0, step=0.01, description="ty",
                                      continuous_update=True)
        for slider in (self.tx, self.ty):
            slider.observe(self._on_slider, names="value")
        self.image = _image(*self.display_size)
        self.image.add_class("sosvae-slerp-image")
        self.corner_zoom = max(1, self.zoom // 2)
        _, H, W = self.image_shape
        self.corner_widgets = [_image(W * self.corner_zoom, H * self.corner_zoom) for _ in self.CORNERS]
        self.corners_button = _button("new corners", "random")
        self.corners_button.on_click(lambda _: self.new_corners())
        corners = widgets.GridBox(
            [_captioned(im, name) for im, name in zip(self.corner_widgets, self.CORNERS)],
            layout=widgets.Layout(grid_template_columns="repeat(2, max-content)"))
        self.widget = widgets.VBox([
            widgets.HTML("<h4>Bilinear slerp between four ω_p samples (eq. 8, Fig. 4, App. D)</h4>"),
            _row([
                _captioned(self.image, "μ + P ω_p(tx, ty) + √ε ω_d"),
                widgets.VBox([_row([self.corners_button, *self._new_z_button(lambda: self.set_z(None))]),
                              self.tx, self.ty, corners])]),
            self.status])
        self.widget.add_class("sosvae-slerp-panel")
        self.set_z(z)

    def set_z(self, z=None) -> None:
        self.z = _as_z(z) if z is not None else self.source.prior_z(self.generator)
        self.distribution = _low_rank(self.source.decode(self.z), "SlerpPanel")
        self.new_corners()

    @_one_thread
    def new_corners(self) -> None:
        """Draw the four corner ω_p (rows tl, tr, bl, br) and a new ω_d."""
        d = self.distribution
        self.corners = torch.randn(4, d.rank, generator=self.generator)
        self.omega_d = torch.randn(d.loc.shape[-1], generator=self.generator)
        self._base = d.rsample(omega_p=torch.zeros(d.rank), omega_d=self.omega_d)
        self.corner_images = [self.sample(w).clamp(0, 1).reshape(self.image_shape)
                              for w in self.corners]
        for im, w in zip(self.corner_widgets, self.corner_images):
            im.value = self._png(w, self.corner_zoom)
        self.render()

    def omega_at(self, tx: float, ty: float) -> torch.Tensor:
        tl, tr, bl, br = self.corners
        return slerp(slerp(tl, tr, tx), slerp(bl, br, tx), ty)

    def sample(self, omega_p: torch.Tensor) -> torch.Tensor:
        """μ + P ω_p + √ε ω_d, flat and unclamped."""
        return self._base + self.distribution.cov_factor @ omega_p

    def set_t(self, tx: float, ty: float) -> None:
        with self._hold():
            self.tx.value, self.ty.value = tx, ty
        self.render()

    @_one_thread
    def render(self) -> None:
        t0 = time.perf_counter()
        self.omega_p = self.omega_at(self.tx.value, self.ty.value)
        self.current_image = self.sample(self.omega_p).clamp(0, 1).reshape(self.image_shape)
        self.image.value = self._png(self.current_image)
        self._timed(t0)

    def _on_slider(self, change) -> None:
        if not self._holding:
            self.render()


# -- 3. latent → distribution, with covariance slices -----------------------------------------

class LatentPanel(_Panel):
    """Choose z, see p(y | z): mean, a sample, per-pixel variance, covariance of one pixel.

    "sample z from prior" draws z ~ N(0, I); "encode dataset image" uses the posterior
    mean of q(z | x) for the image at the index slider (shown as "input"). Clicking on
    the mean picks pixel (row, col), and the last map is its covariance with every
    pixel, Cov(y_i, y) = P P_iᵀ + ε e_i (`covariance_row`; Figs. 1–2 show it for the
    central pixel), in a blue–white–red map with white at zero (the default pixel is the
    central one). For colour images the clicked pixel is taken in channel 0 (red), as the
    paper's code does, and the variance and covariance maps show the three channels side
    by side (R | G | B).

    Works with the pixel-independent models too (β-VAE, Laplace): their covariance slice is one pixel.

    Args:
        model: a trained VAE (or DistributionOnly, which has no encoder and no latent).
        dataset: optional images to encode: an ImageTensorDataset, or a (N, C, H, W) tensor
            (uint8 or float in [0, 1]).
        seed, zoom: as for ComponentPanel.
    """

    def __init__(self, model, dataset=None, *, seed: int = 0, zoom: Optional[int] = None):
        super().__init__(model, None, seed, zoom)
        C, H, W = self.image_shape
        self.dataset = dataset
        self.pixel = (H // 2, W // 2)
        names = ("input", "mean", "sample", "variance", "covariance")
        map_zoom = self._map_zoom()
        self.images = {name: _image(*self.display_size) if name in ("input", "mean", "sample")
                       else _image(C * W * map_zoom, H * map_zoom) for name in names}
        self.captions = {name: widgets.HTML() for name in names}
        for name in names:
            self.images[name].add_class(f"sosvae-latent-{name}")
        self._caption("mean", "mean μ", "click a pixel")
        self._caption("sample", "a sample", "μ + Pω_p + √ε ω_d")
        self._clicks = Event(source=self.images["mean"], watched_events=["mousedown"],
                             prevent_default_action=True)
        self._clicks.on_dom_event(self._on_dom_event)
        self.prior_button = _button("sample z from prior", "random")
        self.prior_button.on_click(lambda _: self.sample_prior())
        controls = [self.prior_button]
        self.index = self.encode_button = None
        can_encode = dataset is not None and hasattr(model, "encode")
        if can_encode:
            self.index = widgets.IntSlider(value=0, min=0, max=len(dataset) - 1, description="image index",
                                           continuous_update=False, style={"description_width": "initial"})
            self.index.observe(lambda change: self.encode(change["new"]), names="value")
            self.encode_button = _button("encode dataset image", "upload")
            self.encode_button.on_click(lambda _: self.encode(self.index.value))
            controls += [self.encode_button, self.index]
        self.widget = widgets.VBox([
            widgets.HTML("<h4>Latent → observation distribution N(μ, PPᵀ + εI) "
                         "(eq. 4, Figs. 1–2)</h4>"),
            _row(controls),
            _row([widgets.VBox([self.captions[n], self.images[n]],
                                       layout=widgets.Layout(flex="0 0 auto"))
                          for n in names if n != "input" or can_encode]),
            self.status])
        self.widget.add_class("sosvae-latent-panel")
        self._blank_input()
        self.sample_prior()

    def _caption(self, name: str, title: str, detail: str) -> None:
        self.captions[name].value = f"<b>{title}</b><br><small>{detail}</small>"

    def _blank_input(self) -> None:
        self.input_image = None
        self.images["input"].value = self._png(torch.full(self.image_shape, 0.5))
        self._caption("input", "input", "none: z from the prior")

    def _dataset_image(self, index: int) -> torch.Tensor:
        item = self.dataset[index]
        if isinstance(item, (tuple, list)):
            item = item[0]
        return to_float(torch.as_tensor(item))

    def sample_prior(self) -> None:
        self.set_z(self.source.prior_z(self.generator))
        self._blank_input()

    @torch.no_grad()
    @_one_thread
    def encode(self, index: int) -> None:
        """z = posterior mean of q(z | x) for dataset image `index`."""
        x = self._dataset_image(index)
        model = self.source.model
        device = model_device(model)
        z = model.encode(x[None].to(device)).mean
        self.set_z(z)
        self.input_image = x
        self.images["input"].value = self._png(x)
        self._caption("input", "input", f"dataset image {index}, z = mean of q(z|x)")

    def set_z(self, z) -> None:
        t0 = time.perf_counter()
        self.z = _as_z(z)
        self.distribution = self.source.decode(self.z)
        self._show_distribution()
        self._timed(t0)

    @_one_thread
    def _show_distribution(self) -> None:
        d = self.distribution
        # one fresh sample per z (eq. 4)
        self.omega_p, self.omega_d = d.draw_noise(self.generator)
        sample = d.rsample(omega_p=self.omega_p, omega_d=self.omega_d)
        self.mean = d.mean.reshape(self.image_shape)
        self.current_image = self.mean.clamp(0, 1)
        self.current_sample = sample.clamp(0, 1).reshape(self.image_shape)
        self.current_variance = d.variance.reshape(self.image_shape)
        self.images["sample"].value = self._png(self.current_sample)
        var_rgb, vmax = colormap_rgb(self.current_variance)
        self.images["variance"].value = png_bytes(var_rgb, self._map_zoom())
        self._caption("variance", "per-pixel variance", f"0 … {vmax:.2g}")
        self.select_pixel(*self.pixel)

    def pixel_index(self, row: int, col: int) -> int:
        """Flat index of (row, col) in channel 0 (C, H, W order)."""
        return row * self.image_shape[2] + col

    @_one_thread
    def select_pixel(self, row: int, col: int) -> None:
        """Show Cov(y_i, y) for i = (channel 0, row, col), and mark the pixel on the mean."""
        t0 = time.perf_counter()
        C, H, W = self.image_shape
        row, col = min(max(int(row), 0), H - 1), min(max(int(col), 0), W - 1)
        self.pixel = (row, col)
        self.current_covariance = self.distribution.covariance_row(
            self.pixel_index(row, col)).reshape(self.image_shape)
        cov_rgb, m = colormap_rgb(self.current_covariance, diverging=True)
        self.images["covariance"].value = png_bytes(cov_rgb, self._map_zoom())
        self._caption("covariance", f"covariance of pixel ({row}, {col})",
                      f"±{m:.2g}: red > 0, white 0, blue < 0")
        marked = _outline(display_array(self.current_image), row, col, self.zoom)
        self.images["mean"].value = png_bytes(marked, 1)
        self._timed(t0)

    def _on_mouse_down(self, x: float, y: float) -> None:
        """(x, y) in the displayed PNG's pixels."""
        self.select_pixel(int(y // self.zoom), int(x // self.zoom))

    def _on_dom_event(self, event: dict) -> None:
        if event.get("type") == "mousedown":
            self._on_mouse_down(*event_xy(event, *self.display_size))


# -- 4. editing by conditioning (eqs. 6–7, Fig. 6) ----------------------------------------

class EditPanel(_Panel):
    """Paint on the image; see the conditional mean given every stroke so far (eqs. 6–7).

    Left: the mean μ with the painted pixels (the edit). Right: E[y₁ | y₂ = edits], the
    model's completion of the edit (`LowRankNormal.conditional_mean`, O(k·R² + S·R) for k
    edited values). Strokes accumulate, each conditioning on all earlier ones too, like
    the paper's sequential edits (Fig. 6); a later stroke overrides an earlier one where
    they overlap. "undo" drops the last stroke, "reset" all of them (back to μ).

    Painting uses mouse down / move / up on the left image (ipyevents); leaving the image
    ends the stroke. The colour picker's colour is used as is on colour images and as its
    luminance on gray ones; the brush radius is in image pixels. Without a browser, call
    `apply_stroke(points, colour, radius)`, `undo()` and `reset()`.

    The "component scale" slider (a temperature) conditions the distribution whose
    principal components are all scaled by it, P → cP (eq. 5), from 1 (the full P) down to
    the paper code's floor of 0.03, which is where the authors' editor works
    (`PAPER_EDIT_SCALE`). A smaller scale lets the εI term weigh more against P, so an
    edit moves the unedited pixels less. It acts on low-rank models only.

    Beyond the mean (not in the paper): "resample the rest" draws a new sample of the unedited
    pixels from the whole conditional p(y₁ | y₂ = edits) (`conditional`), the strokes kept, and
    shows it instead of the mean ("show" switches back); the sample keeps its noise (ω_p, ω_d)
    while strokes are added, so it changes only as the edit does. "conditional variance" shows
    diag of the conditional covariance next to it, on the scale of the variance before any
    edit, so that what the strokes decided is dark and what they left open stays bright.
    Without a browser: `resample()`, `view.value`, `variance_toggle.value`.

    Arguments as for ComponentPanel, plus the initial `colour`, brush `radius` and
    `component_scale`.
    """

    MEAN, SAMPLE = "conditional mean", "conditional sample"

    def __init__(self, model_or_distribution, z=None, *, image_shape=None, seed: int = 0,
                 zoom: Optional[int] = None, colour: str = "#ffffff", radius: Optional[float] = None,
                 component_scale: float = 1.0):
        super().__init__(model_or_distribution, image_shape, seed, zoom)
        if not COMPONENT_FLOOR <= component_scale <= 1.0:
            raise ValueError(f"component_scale = {component_scale}; use a value from {COMPONENT_FLOOR} "
                             f"(the authors' editor: {PAPER_EDIT_SCALE}) to 1 (the full P)")
        self.component_scale = widgets.FloatLogSlider(
            value=component_scale, base=10, min=math.log10(COMPONENT_FLOOR), max=0.0, step=0.01,
            description="component scale", readout_format=".3f", style={"description_width": "initial"})
        self.component_scale.observe(lambda change: self.render(), names="value")
        C, H, W = self.image_shape
        self.colour = widgets.ColorPicker(value=colour, description="colour", concise=False,
                                          layout=widgets.Layout(width="220px"))
        default_radius = radius if radius is not None else max(1.0, round(min(H, W) / 16, 1))
        self.radius = widgets.FloatSlider(value=default_radius, min=0.5, max=max(2.0, min(H, W) / 4),
                                          step=0.5, description="brush radius (pixels)",
                                          style={"description_width": "initial"})
        self.edit_image = _image(*self.display_size)
        self.edit_image.add_class("sosvae-edit-input")
        self.result_image = _image(*self.display_size)
        self.result_image.add_class("sosvae-edit-result")
        # press/release unthrottled (never lose a mouse-up); moves throttled to ~25 per second
        self._press_events = Event(source=self.edit_image, prevent_default_action=True,
                                   watched_events=["mousedown", "mouseup", "mouseleave"])
        self._move_events = Event(source=self.edit_image, watched_events=["mousemove"],
                                  throttle_or_debounce="throttle", wait=40)
        for events in (self._press_events, self._move_events):
            events.on_dom_event(self._on_dom_event)
        self.undo_button = _button("undo", "undo")
        self.undo_button.on_click(lambda _: self.undo())
        self.reset_button = _button("reset", "times")
        self.reset_button.on_click(lambda _: self.reset())
        self.view = widgets.ToggleButtons(options=[self.MEAN, self.SAMPLE], value=self.MEAN,
                                          tooltips=["the conditional mean of the unedited pixels",
                                                    "a sample of them given the strokes"],
                                          style={"button_width": "auto"})
        self.view.observe(lambda change: self.render(), names="value")
        self.resample_button = _button("resample the rest", "random")
        self.resample_button.add_class("sosvae-edit-resample")
        self.resample_button.on_click(lambda _: self.resample())
        self.variance_toggle = widgets.ToggleButton(value=False, description="conditional variance", icon="eye",
                                                    layout=widgets.Layout(width="auto"))
        self.variance_toggle.add_class("sosvae-edit-variance-toggle")
        self.variance_toggle.observe(lambda change: self.render(), names="value")
        self.result_caption = widgets.HTML()
        map_zoom = self._map_zoom()
        self.variance_image = _image(C * W * map_zoom, H * map_zoom)
        self.variance_image.add_class("sosvae-edit-variance")
        self.variance_caption = widgets.HTML()
        self.variance_box = widgets.VBox([self.variance_caption, self.variance_image],
                                         layout=widgets.Layout(flex="0 0 auto", display="none"))
        self.widget = widgets.VBox([
            widgets.HTML("<h4>Edit by conditioning on painted pixels (eqs. 6–7, Fig. 6)</h4>"),
            _row([self.colour, self.radius, self.undo_button, self.reset_button,
                          *self._new_z_button(lambda: self.set_z(None))]),
            _row([self.component_scale]),
            _row([self.view, self.resample_button, self.variance_toggle]),
            _row([_captioned(self.edit_image, "edit: paint here"),
                  widgets.VBox([self.result_caption, self.result_image], layout=widgets.Layout(flex="0 0 auto")),
                  self.variance_box]),
            self.status])
        self.widget.add_class("sosvae-edit-panel")
        self.strokes: List[Tuple[torch.Tensor, torch.Tensor]] = []  # (H, W) mask, (C,) values
        self._live: Optional[dict] = None
        self._noise: Optional[Tuple[torch.Tensor, torch.Tensor]] = None  # (ω_p, ω_d) of the shown sample
        self.set_z(z)

    # the math, callable without a browser

    def set_z(self, z=None) -> None:
        """Decode z (None: from the prior); the strokes are kept and re-applied."""
        self.z = _as_z(z) if z is not None else self.source.prior_z(self.generator)
        self.distribution = self.source.decode(self.z)
        self.render()

    def apply_stroke(self, points: Points, colour: Colour, radius: float) -> torch.Tensor:
        """Paint `points` ((row, col), image pixels) and condition on all strokes so far.

        Returns the conditional mean as a (C, H, W) image (clamped, as displayed).
        """
        C, H, W = self.image_shape
        return self._commit(stroke_mask(points, radius, H, W), colour_to_values(colour, C))

    def undo(self) -> torch.Tensor:
        """Remove the last stroke."""
        if self.strokes:
            self.strokes.pop()
        return self.render()

    def reset(self) -> torch.Tensor:
        """Remove every stroke: the result is the mean again."""
        self.strokes.clear()
        return self.render()

    def resample(self) -> torch.Tensor:
        """A new sample of the unedited pixels given the strokes (new noise ω_p, ω_d), shown
        instead of the conditional mean; the strokes stay. Returns it (C, H, W), clamped."""
        d = self.distribution
        self._noise = d.draw_noise(self.generator)
        if self.view.value == self.SAMPLE:
            return self.render()
        self.view.value = self.SAMPLE  # renders
        return self.current_image

    def edits(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """All strokes so far as (mask (C, H, W) bool, values (k,) in flattened mask order)."""
        C, H, W = self.image_shape
        painted = torch.zeros(H, W, dtype=torch.bool)
        colours = torch.zeros(C, H, W)
        for mask, values in self.strokes:  # in order: later strokes win where they overlap
            painted |= mask
            colours[:, mask] = values[:, None]
        mask3 = painted.expand(C, H, W)
        return mask3, colours[mask3]

    def conditioned_distribution(self):
        """The distribution the edits condition: P scaled by the component scale (floored at 0.03)."""
        d = self.distribution
        c = floor_scales(float(self.component_scale.value))
        if c == 1.0 or not isinstance(d, LowRankNormal):
            return d
        return LowRankNormal(d.loc, d.cov_factor * c, d.cov_diag, validate_args=False)

    def _commit(self, mask: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        if mask.any():
            self.strokes.append((mask, values))
        return self.render()

    @_one_thread
    def render(self) -> torch.Tensor:
        t0 = time.perf_counter()
        mask, values = self.edits()
        self.mask, self.values = mask, values
        d = self.conditioned_distribution()
        sample = self.view.value == self.SAMPLE
        rest = None
        if (sample or self.variance_toggle.value) and not bool(mask.all()):
            rest = d.conditional(mask, values)  # the unedited pixels given the strokes
        if sample and rest is not None:
            if self._noise is None:
                self._noise = d.draw_noise(self.generator)
            omega_p, omega_d = self._noise
            self.result = self._painted(mask, values, clamp=False)
            self.result[~mask] = rest.rsample(omega_p=omega_p[..., :rest.noise_rank], omega_d=omega_d[~mask.reshape(-1)])
            self.result_caption.value = "<b>a conditional sample</b><br><small>of p(y₁ | y₂ = edit)</small>"
        else:
            self.result = d.conditional_mean(mask, values).reshape(self.image_shape)
            self.result_caption.value = "<b>conditional mean E[y₁ | y₂ = edit]</b><br><small>&nbsp;</small>"
        self.current_image = self.result.clamp(0, 1)
        self.current_edit = self._painted(mask, values)
        self.result_image.value = self._png(self.current_image)
        self.edit_image.value = self._png(self.current_edit)
        self.variance_box.layout.display = "" if self.variance_toggle.value else "none"
        self.current_variance = None
        if self.variance_toggle.value:
            self.current_variance = torch.zeros(self.image_shape)
            if rest is not None:
                self.current_variance[~mask] = rest.variance.to(self.current_variance.dtype)
            before = float(d.variance.max())
            rgb, _ = colormap_rgb(self.current_variance, scale=before)
            self.variance_image.value = png_bytes(rgb, self._map_zoom())
            self.variance_caption.value = (f"<b>conditional variance</b><br><small>0 … {before:.2g} (the largest "
                                           f"variance before the edit); edited pixels 0</small>")
        self._timed(t0, f", {int(mask[0].sum())} edited pixels, strokes: {len(self.strokes)}")
        return self.current_image

    def _painted(self, mask: torch.Tensor, values: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """μ with the edited pixels set to their values (what the user asked for)."""
        edit = self.distribution.mean.reshape(self.image_shape).clone()
        edit[mask] = values
        return edit.clamp(0, 1) if clamp else edit

    # mouse input: (x, y) are the displayed PNG's pixels (`event_xy`)

    def _to_image(self, x: float, y: float) -> Tuple[float, float]:
        return y / self.zoom, x / self.zoom

    @_one_thread
    def _on_mouse_down(self, x: float, y: float) -> None:
        C, H, W = self.image_shape
        point = self._to_image(x, y)
        self._live = {"points": [point], "colour": colour_to_values(self.colour.value, C),
                      "radius": float(self.radius.value)}
        self._live["mask"] = stroke_mask([point], self._live["radius"], H, W)
        self._show_live()

    @_one_thread
    def _on_mouse_move(self, x: float, y: float) -> None:
        if self._live is None:  # moving without a pressed button
            return
        C, H, W = self.image_shape
        point = self._to_image(x, y)
        # only the newest segment is new: the union over segments is the whole stroke
        self._live["mask"] |= stroke_mask([self._live["points"][-1], point], self._live["radius"], H, W)
        self._live["points"].append(point)
        self._show_live()

    @_one_thread
    def _on_mouse_up(self, x: float, y: float) -> None:
        if self._live is None:
            return
        if self._to_image(x, y) != self._live["points"][-1]:
            self._on_mouse_move(x, y)
        live, self._live = self._live, None
        self._commit(live["mask"], live["colour"])

    def _show_live(self) -> None:
        """The edit image with the stroke in progress painted on (the result waits for mouse-up)."""
        edit = self._painted(*self.edits())
        edit[:, self._live["mask"]] = self._live["colour"][:, None]
        self.edit_image.value = self._png(edit)

    def _on_dom_event(self, event: dict) -> None:
        handler = {"mousedown": self._on_mouse_down, "mousemove": self._on_mouse_move,
                   "mouseup": self._on_mouse_up, "mouseleave": self._on_mouse_up}.get(event.get("type"))
        if handler is not None:
            handler(*event_xy(event, *self.display_size))


# -- latency -------------------------------------------------------------------------------

def _stats(times_s: List[float]) -> dict:
    ms = [t * 1e3 for t in times_s]
    return {"median_ms": round(statistics.median(ms), 3), "max_ms": round(max(ms), 3), "n": len(ms)}


def _time(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure_latency(model_or_distribution, repeats: int = 5, seed: int = 0,
                    image_shape=None, dataset=None) -> dict:
    """Callback latencies of the four panels, in ms (median and max over `repeats`).

    Each time is one Python callback, from the control's new value (or the mouse
    event) to the new PNG bytes set on the Image widget, i.e. everything the kernel does;
    the browser's transfer and drawing are not included. Measured:
        component_slider  one slider tick: U·(s·a·Vᵀω_p) + PNG;
        slerp_slider      one tx tick: two nested slerps, P ω_p + PNG;
        latent_click      a click on the mean: covariance_row + two PNGs;
        edit_stroke_up    mouse-up of a 10-point stroke: conditional mean + two PNGs;
        edit_stroke_all   the whole stroke, mouse-down, 8 moves (live preview) and up;
        edit_resample     "resample the rest": the whole conditional and a sample of it + PNG;
        edit_undo         undo one stroke (re-conditions on the rest);
        new_z             decode a new z and factorise P (once per z, not per tick).
    """
    results: dict = {}
    comp = ComponentPanel(model_or_distribution, image_shape=image_shape, seed=seed)
    C, H, W = comp.image_shape
    results["image_shape"] = [C, H, W]
    results["rank"] = len(comp.sliders)
    results["zoom"] = comp.zoom
    comp.sliders[0].value = 1.5  # warm-up
    ticks = []
    for i in range(repeats):  # each tick a real change, else no callback runs
        slider = comp.sliders[(i + 1) % len(comp.sliders)]
        value = round(-3.0 + 0.3 * i, 1)
        ticks.append((slider, value if value != slider.value else value + 0.1))
    results["component_slider"] = _stats(
        [_time(lambda s=s, v=v: setattr(s, "value", v)) for s, v in ticks])
    results["new_z"] = _stats([_time(lambda: comp.set_z(None)) for _ in range(max(1, repeats // 2))])

    sl = SlerpPanel(model_or_distribution, image_shape=image_shape, seed=seed)
    sl.tx.value = 0.5
    results["slerp_slider"] = _stats(
        [_time(lambda t=t: setattr(sl.tx, "value", float(t))) for t in np.linspace(0.1, 0.9, repeats)])

    if not isinstance(model_or_distribution, ObservationDistribution):
        lp = LatentPanel(model_or_distribution, dataset, seed=seed)
        z = lp.zoom
        clicks = [(int((c + 0.5) * z), int((r + 0.5) * z))
                  for r, c in zip(np.linspace(0, H - 1, repeats).astype(int),
                                  np.linspace(W - 1, 0, repeats).astype(int))]
        results["latent_click"] = _stats([_time(lambda p=p: lp._on_mouse_down(*p)) for p in clicks])

    ep = EditPanel(model_or_distribution, image_shape=image_shape, seed=seed)
    up, whole, undo = [], [], []
    zoom = ep.zoom
    for i in range(repeats):
        row = (i + 1) * H / (repeats + 1)
        xs = np.linspace(0.2 * W, 0.8 * W, 10) * zoom
        ys = np.full(10, row * zoom)
        t0 = time.perf_counter()
        ep._on_mouse_down(xs[0], ys[0])
        for x, y in zip(xs[1:-1], ys[1:-1]):
            ep._on_mouse_move(x, y)
        up.append(_time(lambda: ep._on_mouse_up(xs[-1], ys[-1])))
        whole.append(time.perf_counter() - t0)
    results["edit_stroke_up"] = _stats(up)
    results["edit_stroke_all"] = _stats(whole)
    results["edited_pixels_at_end"] = int(ep.mask[0].sum())
    results["edit_resample"] = _stats([_time(ep.resample) for _ in range(repeats)])
    ep.view.value = ep.MEAN  # undo below times the mean, as before
    for _ in range(repeats):
        undo.append(_time(ep.undo))
    results["edit_undo"] = _stats(undo)
    return results
