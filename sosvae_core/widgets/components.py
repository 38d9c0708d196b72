"""The principal-components panel: scale the components of the covariance factor P (eq. 5, Fig. 5).

With the SVD P = U diag(s) Vᵀ, the sample y = μ + U diag(s·a) Vᵀ ω_p + √ε ω_d for scales a;
μ + √ε ω_d and Vᵀω_p are kept per z and ω, so a slider tick costs U·(s·a·Vᵀω_p), O(S·R).
"""
from __future__ import annotations

import time
from typing import Optional

import ipywidgets as widgets
import torch

from .base import _one_thread, _Panel
from .rendering import _button, _captioned, _image, _row

__all__ = ["ComponentPanel"]


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

    low_rank_only = True

    def __init__(self, model_or_distribution, z=None, *, image_shape=None, seed: int = 0,
                 zoom: Optional[int] = None):
        super().__init__(model_or_distribution, image_shape, seed, zoom)
        started = time.perf_counter()
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
        buttons = _row([self.resample_button, self.reset_button, *self._new_z_button()])
        grid = widgets.GridBox(self.sliders, layout=widgets.Layout(
            grid_template_columns="repeat(auto-fill, 260px)"))
        self.widget = widgets.VBox([
            widgets.HTML("<h4>Principal components of the covariance (eq. 5, Fig. 5)</h4>"),
            _row([_captioned(self.image, "sample μ + P'ω_p + √ε ω_d"),
                  widgets.VBox([buttons, grid],
                               layout=widgets.Layout(flex="1 1 0px", min_width="270px"))]),
            self.status])
        self.widget.add_class("sosvae-component-panel")
        self._show_distribution(started)

    @property
    def scales(self) -> torch.Tensor:
        return torch.tensor([s.value for s in self.sliders], dtype=torch.float32)

    @_one_thread
    def _show_distribution(self, started: float) -> None:
        """Factorise P once per z, draw ω and render."""
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
