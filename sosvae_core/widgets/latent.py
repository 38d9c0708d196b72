"""The latent panel: z → p(y | z) = N(μ, PPᵀ + εI) (eq. 4, Figs. 1–2), its mean, a sample, the
per-pixel variance and the covariance row of a clicked pixel, Cov(y_i, y) = P P_iᵀ + ε e_i.
"""
from __future__ import annotations

import time
from typing import Optional

import ipywidgets as widgets
import torch
from ipyevents import Event

from ..data import to_float
from ..networks import model_device
from .base import _one_thread, _Panel
from .rendering import _button, _image, _outline, _row, colormap_rgb, display_array, png_bytes

__all__ = ["LatentPanel"]


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

    NAMES = ("input", "mean", "sample", "variance", "covariance")

    def __init__(self, model, dataset=None, *, seed: int = 0, zoom: Optional[int] = None):
        super().__init__(model, None, seed, zoom)
        C, H, W = self.image_shape
        self.dataset = dataset
        self.pixel = (H // 2, W // 2)
        map_zoom = self._map_zoom()
        self.images = {name: _image(*self.display_size) if name in ("input", "mean", "sample")
                       else _image(C * W * map_zoom, H * map_zoom) for name in self.NAMES}
        self.captions = {name: widgets.HTML() for name in self.NAMES}
        for name in self.NAMES:
            self.images[name].add_class(f"sosvae-latent-{name}")
        self._caption("mean", "mean μ", "click a pixel")
        self._caption("sample", "a sample", "μ + Pω_p + √ε ω_d")
        self._clicks = Event(source=self.images["mean"], watched_events=["mousedown"],
                             prevent_default_action=True)
        self._clicks.on_dom_event(self._on_dom_event)
        self.prior_button = _button("sample z from prior", "random")
        self.prior_button.on_click(lambda _: self.sample_prior())
        controls = [self.prior_button, *self._encode_controls(model, dataset)]
        shown = [n for n in self.NAMES if n != "input" or self.encode_button is not None]
        self.widget = widgets.VBox([
            widgets.HTML("<h4>Latent → observation distribution N(μ, PPᵀ + εI) "
                         "(eq. 4, Figs. 1–2)</h4>"),
            _row(controls),
            _row([widgets.VBox([self.captions[n], self.images[n]], layout=widgets.Layout(flex="0 0 auto"))
                  for n in shown]),
            self.status])
        self.widget.add_class("sosvae-latent-panel")
        self._blank_input()
        self.sample_prior()

    def _encode_controls(self, model, dataset) -> list:
        """The index slider and "encode" button, or none without a dataset or an encoder."""
        self.index = self.encode_button = None
        if dataset is None or not hasattr(model, "encode"):
            return []
        self.index = widgets.IntSlider(value=0, min=0, max=len(dataset) - 1, description="image index",
                                       continuous_update=False, style={"description_width": "initial"})
        self.index.observe(lambda change: self.encode(change["new"]), names="value")
        self.encode_button = _button("encode dataset image", "upload")
        self.encode_button.on_click(lambda _: self.encode(self.index.value))
        return [self.encode_button, self.index]

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
        self.set_z(None)
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

    @_one_thread
    def _show_distribution(self, started: float) -> None:
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
        self._timed(started)

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

    def mouse_down(self, x: float, y: float) -> None:
        """A click at (x, y), the displayed PNG's pixels, selects that pixel."""
        self.select_pixel(int(y // self.zoom), int(x // self.zoom))
