"""The slerp panel: spherical interpolation between four ω_p samples (eq. 8, Fig. 4, Appendix D).

ω_p(tx, ty) = slerp(slerp(ω_tl, ω_tr; tx), slerp(ω_bl, ω_br; tx); ty), shown as the sample
μ + P ω_p + √ε ω_d; μ + √ε ω_d is kept per corner draw, so a tick costs P ω_p, O(S·R).
"""
from __future__ import annotations

import time
from typing import Optional

import ipywidgets as widgets
import torch

from ..slerp import slerp
from .base import _one_thread, _Panel
from .rendering import _button, _captioned, _image, _row

__all__ = ["SlerpPanel"]


class SlerpPanel(_Panel):
    """Spherical interpolation between four ω_p samples (eq. 8, Fig. 4, Appendix D).

    Four corner draws ω_tl, ω_tr, ω_bl, ω_br ~ N(0, I_R) ("new corners" redraws them and
    ω_d); sliders tx, ty ∈ [0, 1] pick
        ω_p = slerp(slerp(ω_tl, ω_tr; tx), slerp(ω_bl, ω_br; tx); ty),
    the paper's bilinear slerp grid (Fig. 4), and the image is μ + P ω_p + √ε ω_d. The corners are
    shown small; (tx, ty) = (0, 0) is the top-left one. Arguments as for ComponentPanel.
    """

    CORNERS = ("top left", "top right", "bottom left", "bottom right")
    low_rank_only = True

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
                widgets.VBox([_row([self.corners_button, *self._new_z_button()]),
                              self.tx, self.ty, corners])]),
            self.status])
        self.widget.add_class("sosvae-slerp-panel")
        self.set_z(z)

    def _show_distribution(self, started: float) -> None:
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
