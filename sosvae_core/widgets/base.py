"""What every panel shares: the model or distribution it shows, z → p(y | z), display, timing.

A panel shows one image's observation distribution p(y | z) = N(μ, PPᵀ + εI) (eq. 3), decoded
at a latent z (`set_z`; None draws z ~ N(0, I) from the prior) or given fixed. Changing z
decodes and factorises once; slider ticks and mouse events then cost O(S·R) (see the
package docstring).
"""
from __future__ import annotations

import functools
import math
import time
from contextlib import contextmanager
from typing import Callable, Iterator, List, Optional, Sequence

import ipywidgets as widgets
import torch

from ..networks import model_device, prior_codes
from ..observations import LowRankNormal, ObservationDistribution
from .rendering import _button, default_zoom, display_array, event_xy, png_bytes

Distribution = ObservationDistribution


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
        return prior_codes(self.latent_dim, 1, generator)

    @torch.no_grad()
    @_one_thread
    def decode(self, z: Optional[torch.Tensor]) -> Distribution:
        if self.model is None:
            return self.fixed
        device = model_device(self.model)
        z = torch.as_tensor(z, dtype=torch.float32).reshape(1, -1).to(device)
        return _single(self.model.decode(z))


def _as_z(z) -> Optional[torch.Tensor]:
    return None if z is None else torch.as_tensor(z, dtype=torch.float32).reshape(1, -1)


class _Panel:
    """Shared plumbing: z → the distribution, the widget, display, timing, mouse events and a
    guard against callback storms.

    A panel sets `low_rank_only` when it needs P (ω_p, the principal components), and says in
    `_show_distribution` what it shows of a newly decoded distribution.
    """

    widget: widgets.Box
    current_image: torch.Tensor
    low_rank_only = False

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

    # z → p(y | z)

    def set_z(self, z=None) -> None:
        """Decode z (None: a draw from the prior) and show its distribution; what the panel
        keeps besides (scales, strokes, the clicked pixel) stays."""
        started = time.perf_counter()
        self._decode(z)
        self._show_distribution(started)

    def _decode(self, z) -> None:
        self.z = _as_z(z) if z is not None else self.source.prior_z(self.generator)
        d = self.source.decode(self.z)
        if self.low_rank_only and not isinstance(d, LowRankNormal):
            raise TypeError(f"{type(self).__name__} needs the low-rank (SOS-VAE) observation model; a "
                            f"{type(d).__name__} has no ω_p / cov_factor")
        self.distribution = d

    def _show_distribution(self, started: float) -> None:
        """Show the newly decoded `self.distribution` (`started`: when `set_z` began)."""
        raise NotImplementedError

    # controls

    @contextmanager
    def _hold(self) -> Iterator[None]:
        """Set several controls without rendering after each; render once afterwards."""
        self._holding += 1
        try:
            yield
        finally:
            self._holding -= 1

    def _on_slider(self, change) -> None:
        if not self._holding:
            self.render()

    def _new_z_button(self) -> List[widgets.Button]:
        """["new z from prior"], or [] for a fixed distribution (no latent to redraw)."""
        self.new_z_button = None
        if self.source.latent_dim == 0:
            return []
        self.new_z_button = _button("new z from prior", "refresh")
        self.new_z_button.on_click(lambda _: self.set_z(None))
        return [self.new_z_button]

    # mouse input: (x, y) are the displayed PNG's pixels (`event_xy`)

    def mouse_down(self, x: float, y: float) -> None:
        """A mouse button pressed at (x, y); a panel without mouse input ignores it."""

    def mouse_move(self, x: float, y: float) -> None:
        """The mouse moved to (x, y)."""

    def mouse_up(self, x: float, y: float) -> None:
        """The mouse button released at (x, y), or the mouse left the image there."""

    def _on_dom_event(self, event: dict) -> None:
        handler = {"mousedown": self.mouse_down, "mousemove": self.mouse_move,
                   "mouseup": self.mouse_up, "mouseleave": self.mouse_up}.get(event.get("type"))
        if handler is not None:
            handler(*event_xy(event, *self.display_size))

    # display

    def _png(self, image: torch.Tensor, zoom: Optional[int] = None) -> bytes:
        return png_bytes(display_array(image), zoom or self.zoom)

    def _map_zoom(self) -> int:
        """The upscale of a map that shows the channels side by side (`colormap_rgb`)."""
        C, H, W = self.image_shape
        return default_zoom(H, C * W)

    def _timed(self, start: float, note: str = "") -> None:
        self.last_update_ms = (time.perf_counter() - start) * 1e3
        self.status.value = f"<small>update {self.last_update_ms:.1f} ms{note}</small>"
