"""The edit panel: paint strokes, see the model's completion given all of them (eqs. 6–7, Fig. 6).

With the edited pixels y₂ = b and the rest y₁, the panel shows the conditional mean
E[y₁ | y₂ = b] = μ₁ + Σ₁₂Σ₂₂⁻¹(b − μ₂) (eq. 7), O(k·R² + S·R) for k edited values with the
low-rank Σ = PPᵀ + εI, or a sample of the whole conditional p(y₁ | y₂ = b) and its variance.
"""
from __future__ import annotations

import math
import time
from typing import List, Optional, Sequence, Tuple, Union

import ipywidgets as widgets
import torch
from ipyevents import Event

from ..editing import COMPONENT_FLOOR, PAPER_EDIT_SCALE, colour_to_values, floor_scales, stroke_mask
from ..observations import LowRankNormal
from .base import _one_thread, _Panel
from .rendering import _button, _captioned, _image, _row, colormap_rgb, png_bytes

__all__ = ["EditPanel"]

Colour = Union[str, Sequence[float]]
Points = Sequence[Tuple[float, float]]


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
    `apply_stroke(points, colour, radius)`, `undo()` and `reset()`, or `mouse_down`,
    `mouse_move` and `mouse_up` at the displayed PNG's pixels.

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
        self._brush_controls(colour, radius, component_scale)
        self._canvas()
        self._view_controls()
        self.widget = widgets.VBox([
            widgets.HTML("<h4>Edit by conditioning on painted pixels (eqs. 6–7, Fig. 6)</h4>"),
            _row([self.colour, self.radius, self.undo_button, self.reset_button, *self._new_z_button()]),
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

    # the widgets

    def _brush_controls(self, colour: str, radius: Optional[float], component_scale: float) -> None:
        """The component scale, colour, brush radius, undo and reset."""
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
        self.undo_button = _button("undo", "undo")
        self.undo_button.on_click(lambda _: self.undo())
        self.reset_button = _button("reset", "times")
        self.reset_button.on_click(lambda _: self.reset())

    def _canvas(self) -> None:
        """The image painted on, with its mouse events, and the result beside it."""
        self.edit_image = _image(*self.display_size)
        self.edit_image.add_class("sosvae-edit-input")
        self.result_image = _image(*self.display_size)
        self.result_image.add_class("sosvae-edit-result")
        self.result_caption = widgets.HTML()
        # press/release unthrottled (never lose a mouse-up); moves throttled to ~25 per second
        self._press_events = Event(source=self.edit_image, prevent_default_action=True,
                                   watched_events=["mousedown", "mouseup", "mouseleave"])
        self._move_events = Event(source=self.edit_image, watched_events=["mousemove"],
                                  throttle_or_debounce="throttle", wait=40)
        for events in (self._press_events, self._move_events):
            events.on_dom_event(self._on_dom_event)

    def _view_controls(self) -> None:
        """Mean or sample, "resample the rest" and the conditional variance map."""
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
        C, H, W = self.image_shape
        map_zoom = self._map_zoom()
        self.variance_image = _image(C * W * map_zoom, H * map_zoom)
        self.variance_image.add_class("sosvae-edit-variance")
        self.variance_caption = widgets.HTML()
        self.variance_box = widgets.VBox([self.variance_caption, self.variance_image],
                                         layout=widgets.Layout(flex="0 0 auto", display="none"))

    # the math, callable without a browser

    def _show_distribution(self, started: float) -> None:
        """The strokes are kept and re-applied to the new distribution."""
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
        rest = None
        if (self.view.value == self.SAMPLE or self.variance_toggle.value) and not bool(mask.all()):
            rest = d.conditional(mask, values)  # the unedited pixels given the strokes
        self.result = self._result(d, rest, mask, values)
        self.current_image = self.result.clamp(0, 1)
        self.current_edit = self._painted(mask, values)
        self.result_image.value = self._png(self.current_image)
        self.edit_image.value = self._png(self.current_edit)
        self._show_variance(d, rest, mask)
        self._timed(t0, f", {int(mask[0].sum())} edited pixels, strokes: {len(self.strokes)}")
        return self.current_image

    def _result(self, d, rest, mask: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """The edit completed by a conditional sample (`rest` given, sample view) or by the
        conditional mean, (C, H, W) unclamped; captions it."""
        if self.view.value == self.SAMPLE and rest is not None:
            if self._noise is None:
                self._noise = d.draw_noise(self.generator)
            omega_p, omega_d = self._noise
            result = self._painted(mask, values, clamp=False)
            result[~mask] = rest.rsample(omega_p=omega_p[..., :rest.noise_rank], omega_d=omega_d[~mask.reshape(-1)])
            self.result_caption.value = "<b>a conditional sample</b><br><small>of p(y₁ | y₂ = edit)</small>"
            return result
        self.result_caption.value = "<b>conditional mean E[y₁ | y₂ = edit]</b><br><small>&nbsp;</small>"
        return d.conditional_mean(mask, values).reshape(self.image_shape)

    def _show_variance(self, d, rest, mask: torch.Tensor) -> None:
        """diag of the conditional covariance (0 on the edit) on the scale of the variance
        before the edit, when the toggle is on; `current_variance` None otherwise."""
        self.variance_box.layout.display = "" if self.variance_toggle.value else "none"
        self.current_variance = None
        if not self.variance_toggle.value:
            return
        self.current_variance = torch.zeros(self.image_shape)
        if rest is not None:
            self.current_variance[~mask] = rest.variance.to(self.current_variance.dtype)
        before = float(d.variance.max())
        rgb, _ = colormap_rgb(self.current_variance, scale=before)
        self.variance_image.value = png_bytes(rgb, self._map_zoom())
        self.variance_caption.value = (f"<b>conditional variance</b><br><small>0 … {before:.2g} (the largest "
                                       f"variance before the edit); edited pixels 0</small>")

    def _painted(self, mask: torch.Tensor, values: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """μ with the edited pixels set to their values (what the user asked for)."""
        edit = self.distribution.mean.reshape(self.image_shape).clone()
        edit[mask] = values
        return edit.clamp(0, 1) if clamp else edit

    # mouse input: (x, y) are the displayed PNG's pixels (`event_xy`)

    def _to_image(self, x: float, y: float) -> Tuple[float, float]:
        return y / self.zoom, x / self.zoom

    @_one_thread
    def mouse_down(self, x: float, y: float) -> None:
        """Start a stroke at (x, y) with the current colour and radius."""
        C, H, W = self.image_shape
        point = self._to_image(x, y)
        self._live = {"points": [point], "colour": colour_to_values(self.colour.value, C),
                      "radius": float(self.radius.value)}
        self._live["mask"] = stroke_mask([point], self._live["radius"], H, W)
        self._show_live()

    @_one_thread
    def mouse_move(self, x: float, y: float) -> None:
        """Extend the stroke in progress to (x, y), shown painted; nothing without one."""
        if self._live is None:  # moving without a pressed button
            return
        C, H, W = self.image_shape
        point = self._to_image(x, y)
        # only the newest segment is new: the union over segments is the whole stroke
        self._live["mask"] |= stroke_mask([self._live["points"][-1], point], self._live["radius"], H, W)
        self._live["points"].append(point)
        self._show_live()

    @_one_thread
    def mouse_up(self, x: float, y: float) -> None:
        """End the stroke at (x, y) and condition on it with all earlier ones."""
        if self._live is None:
            return
        if self._to_image(x, y) != self._live["points"][-1]:
            self.mouse_move(x, y)
        live, self._live = self._live, None
        self._commit(live["mask"], live["colour"])

    def _show_live(self) -> None:
        """The edit image with the stroke in progress painted on (the result waits for mouse-up)."""
        edit = self._painted(*self.edits())
        edit[:, self._live["mask"]] = self._live["colour"][:, None]
        self.edit_image.value = self._png(edit)
