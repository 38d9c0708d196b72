"""What every observation model shares: the noise interface, the head's start, the checks.

An observation model p(y | z) over an image y of S = C·H·W pixels (flattened in C, H, W
order) is two things: a distribution class and a decoder head that maps the decoder's
feature maps to that distribution's parameters. All of them are sampled the same way,
with explicit standard-normal noise (paper eq. 4):

    y = μ + P ω_p + (pixel noise driven by ω_d),   ω_p ~ N(0, I_R),  ω_d ~ N(0, I_S),

where `noise_rank` R is the rank of the structured part (25 for SOS-VAE, 0 for the
pixel-independent and sparse-precision models, which take ω_d alone). Figures and
widgets draw (ω_p, ω_d) with `draw_noise` and pass them to `rsample`, so the same seed
gives the same picture for every model.

Heads start with weights of std 1e-5 and the mean at 0.5, as the paper's code does, so
training starts from a flat grey image with a tiny variance.

The distributions follow torch.distributions' conventions: the arguments' batch shapes
broadcast together, `expand` gives a wider batch, and with validate_args a value is checked
as torch's `_validate_sample` does; the checks here raise one-line errors.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.distributions import Distribution, constraints

LOG_2PI = math.log(2 * math.pi)
HEAD_INIT_STD = 1e-5


def check_tensors(**tensors: torch.Tensor) -> None:
    """The tensor arguments of a distribution: tensors, of one floating dtype, on one device."""
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a tensor, got {type(t).__name__}; wrap it with torch.as_tensor(...)")
    names = " and ".join(tensors)
    dtypes = [t.dtype for t in tensors.values()]
    if len(set(dtypes)) > 1 or not dtypes[0].is_floating_point:
        got = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise ValueError(f"{names} must share one floating dtype, got {got}; cast them with .to(dtype)")
    devices = [t.device for t in tensors.values()]
    if len(set(devices)) > 1:
        raise ValueError(f"{names} must be on one device, got {', '.join(map(str, devices))}; move them with .to(device)")


def broadcast_batch(**batch_shapes: torch.Size) -> torch.Size:
    """The batch shape of a distribution: its arguments' batch shapes broadcast together."""
    try:
        return torch.broadcast_shapes(*batch_shapes.values())
    except RuntimeError:
        got = ", ".join(f"{name} {tuple(shape)}" for name, shape in batch_shapes.items())
        raise ValueError(f"the batch shapes do not broadcast ({got}); give the arguments equal leading "
                         f"dimensions, or 1 where one is shared") from None


def check_finite(name: str, t: torch.Tensor) -> None:
    if not torch.isfinite(t).all():
        raise ValueError(
            f"{name} contains NaN or Inf values; check the network output (the trainer's "
            f"NaN detector names the step) or lower the learning rate"
        )


def flat_mask(mask: torch.Tensor, size: int) -> torch.Tensor:
    """A boolean mask over the S pixels, given flat (S,) or image-shaped (C, H, W)."""
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor of shape (S,) or (C, H, W), got "
                         f"{getattr(mask, 'dtype', type(mask).__name__)}; pass e.g. `mask > 0`")
    mask = mask.reshape(-1)
    if mask.numel() != size:
        raise ValueError(
            f"mask has {mask.numel()} entries but the image has S = {size} pixels; "
            f"pass a (S,) or (C, H, W) mask shared by the batch"
        )
    return mask


def checked_edit(dist, mask: torch.Tensor, values: torch.Tensor):
    """An edit of a flat batch (B, S) checked: (flat bool mask, values (B, k) detached, loc's dtype)."""
    B, S = dist.loc.shape
    mask = flat_mask(mask, S).to(dist.loc.device)
    k = int(mask.sum())
    if values.shape[-1] != k or values.dim() > 2 or (values.dim() == 2 and values.shape[0] != B):
        raise ValueError(f"values must have shape (B, k) = ({B}, {k}) or (k,), got "
                         f"{tuple(values.shape)}; k is the number of True pixels in mask")
    return mask, values.detach().to(dist.loc).expand(B, k)


class ObservationDistribution(Distribution):
    """Base of the observation distributions over flattened images (..., S).

    Subclasses set `loc` (μ, the mean and mode) and implement `rsample(sample_shape, omega_p,
    omega_d)`, `log_prob`, `entropy`, `variance`, `covariance_row(i)`,
    `conditional_mean(mask, values)`, `conditional(mask, values)` (the distribution of the
    unedited pixels given the edited ones), `marginal(keep)` (of some pixels) and `first()`.
    """

    arg_constraints = {}
    support = constraints.real_vector
    has_rsample = True

    def _init_shapes(self, batch_shape: torch.Size, event_shape: torch.Size,
                     validate_args: Optional[bool]) -> None:
        """`Distribution.__init__` without its argument checks: the subclass has checked its
        arguments already, with one-line messages, and torch's checks would read them again."""
        super().__init__(batch_shape, event_shape, validate_args=False)
        if validate_args is None:
            del self._validate_args  # follow torch's global default, as Distribution does
        else:
            self._validate_args = validate_args

    def _check_value(self, value: torch.Tensor) -> None:
        """The value's pixel count always; with validate_args also its batch shape and NaNs
        (torch's `_validate_sample`, with one-line messages)."""
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"value must be a tensor of shape (..., S), got {type(value).__name__}")
        if value.dim() < 1 or value.shape[-1] != self.event_shape[0]:
            raise ValueError(f"value has {value.shape[-1] if value.dim() else 0} pixels, expected S = "
                             f"{self.event_shape[0]}; flatten images to (..., S) in C, H, W order")
        if self._validate_args:
            self._validate_sample(value)

    def _validate_sample(self, value: torch.Tensor) -> None:
        try:
            torch.broadcast_shapes(value.shape, self.batch_shape + self.event_shape)
        except RuntimeError:
            raise ValueError(f"value of shape {tuple(value.shape)} does not broadcast with the batch "
                             f"{tuple(self.batch_shape)} of {type(self).__name__}; give it shape "
                             f"(..., *batch_shape, S)") from None
        if torch.isnan(value).any():
            raise ValueError("value contains NaN, which is outside the support (real vectors); "
                             "check the data, or pass validate_args=False to skip this check")

    def _expanded(self, cls: type, batch_shape, tensors: dict, _instance=None) -> "ObservationDistribution":
        """`expand()`'s common part: a new instance of `cls` sharing this one's tensors, each
        name → (tensor, number of trailing non-batch dims) expanded to the new batch shape."""
        new = self._get_checked_instance(cls, _instance)
        batch_shape = torch.Size(batch_shape)
        for name, (t, event_dims) in tensors.items():
            setattr(new, name, None if t is None else
                    t.expand(batch_shape + (t.shape[t.dim() - event_dims:] if event_dims else ())))
        ObservationDistribution._init_shapes(new, batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def mean(self) -> torch.Tensor:
        """μ: every observation model here is symmetric about its location."""
        return self.loc

    @property
    def mode(self) -> torch.Tensor:
        return self.loc

    @property
    def noise_rank(self) -> int:
        """R, the length of ω_p (0: the model has no structured noise)."""
        return 0

    def draw_noise(self, generator: Optional[torch.Generator] = None,
                   sample_shape: torch.Size = torch.Size()) -> Tuple[torch.Tensor, torch.Tensor]:
        """(ω_p, ω_d) for `rsample`, drawn on the CPU from `generator` (ω_p first), on loc's device."""
        shape = self._extended_shape(torch.Size(sample_shape))
        omega_p = torch.randn(shape[:-1] + (self.noise_rank,), generator=generator)
        omega_d = torch.randn(shape, generator=generator)
        return omega_p.to(self.loc), omega_d.to(self.loc)

    def _noise(self, sample_shape, omega_p: Optional[torch.Tensor], omega_d: Optional[torch.Tensor]):
        """Check the given noise and draw whatever is missing (torch's global RNG)."""
        shape = self._extended_shape(torch.Size(sample_shape))
        if omega_p is None:
            omega_p = torch.randn(shape[:-1] + (self.noise_rank,), dtype=self.loc.dtype, device=self.loc.device)
        if omega_p.shape[-1] != self.noise_rank:
            what = (f"the rank R = {self.noise_rank}" if self.noise_rank
                    else f"0: {type(self).__name__} has no structured noise; pass omega_d alone")
            raise ValueError(f"omega_p has last dimension {omega_p.shape[-1]}, expected {what}")
        if omega_d is None:
            omega_d = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        if omega_d.shape[-1] != self.event_shape[0]:
            raise ValueError(f"omega_d has last dimension {omega_d.shape[-1]}, expected S = {self.event_shape[0]}")
        return omega_p, omega_d

    def marginal(self, keep: torch.Tensor) -> "ObservationDistribution":
        """The distribution of the pixels `keep` selects. Optional for a subclass."""
        raise NotImplementedError(f"{type(self).__name__} has no marginal over part of an image")

    def first(self) -> "ObservationDistribution":
        """The first image of the batch, unbatched (event shape (S,)), detached, float32 on
        the CPU: what the interactive panels update cheaply. Optional for a subclass."""
        raise NotImplementedError(f"{type(self).__name__} has no unbatched form (first()); the "
                                  f"interactive panels cannot show it")


def inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


def tiny_conv(c_in: int, c_out: int, bias: float) -> nn.Conv2d:
    """A 1×1 convolution with weights of std 1e-5 and a constant bias (the heads' start)."""
    conv = nn.Conv2d(c_in, c_out, 1)
    nn.init.normal_(conv.weight, 0.0, HEAD_INIT_STD)
    nn.init.constant_(conv.bias, bias)
    return conv


@dataclass(frozen=True)
class ObservationModel:
    """One entry of the registry (`sosvae_core.observations.REGISTRY`).

    name: the config's `model` field and the command line's `--model`.
    label: its name in tables and figure titles.
    head: (c_in, image_shape, rank=, eps=, stencil=) → decoder head module; None for a
        model that is its own distribution (`standalone`).
    entropy_bound: the entropy target ξ_H applies (SOS-VAE's stabiliser, Section 3.3).
    warm_release: the quick profile's gentle release of the variance heads applies
        (False for Appendix A's unstabilised ablation).
    standalone: (image_shape, rank=, eps=, seed=) → a model with no encoder, decoder or
        latent (hence no KL target), e.g. Section 4.5's distribution-only model.
    step_cost: a training step's cost relative to SOS-VAE's, to schedule parallel runs
        (measured with benchmarks/bench_train.py on the quick CelebA networks, a 2-core AMD
        EPYC: β-VAE 0.8, Dorta et al. 1.0; the distribution-only model has no network).
    """

    name: str
    label: str
    head: Optional[Callable[..., nn.Module]] = None
    entropy_bound: bool = False
    warm_release: bool = True
    standalone: Optional[Callable[..., nn.Module]] = None
    step_cost: float = 1.0

    @property
    def latent(self) -> bool:
        return self.standalone is None

    def make_head(self, c_in: int, image_shape: Sequence[int], rank: int, eps: float, stencil: int) -> nn.Module:
        if self.head is None:
            raise ValueError(f"the '{self.name}' model has no decoder head; build it with "
                             f"sosvae_core.networks.build_model")
        return self.head(c_in, tuple(image_shape), rank=rank, eps=eps, stencil=stencil)
