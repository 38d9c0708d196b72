"""Encoder, decoder and observation heads (paper Section 4.1).

A ResNet encoder and decoder for any C×H×W, following the paper's code: stride-2
3×3 convolutions halve each side with ceiling (218×178 → 109×89 → 55×45 → 28×23),
and the decoder undoes exactly that with transposed convolutions whose output
padding restores odd or even sides. No padding, cropping or interpolation.

The decoders differ only in the observation head, which comes from the registry of
observation models (`sosvae_core.observations`): the low-rank head of SOS-VAE, the
β-VAE's per-pixel variance, Dorta et al.'s sparse precision, and so on.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Normal

from .observations import get_observation_model

# how the decoder doubles a side: the paper's transposed convolutions, or a nearest-neighbour
# resize followed by a convolution (no checkerboard from uneven kernel overlap; Odena et al. 2016)
UPSAMPLING = ("transpose", "resize")
MIN_VARIANCE = 1e-5


def norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":  # batch-independent: exact DDP equivalence on CPU
        return nn.GroupNorm(min(32, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm '{kind}'; use 'batch', 'group' or 'none'")


def halve(size: int) -> int:
    """Side length after a 3×3, stride-2, padding-1 convolution."""
    return (size + 1) // 2


class ResidualBlock(nn.Module):
    """conv3×3(stride) → norm → ReLU → conv3×3 → norm, plus a 1×1 shortcut when shapes change."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, norm: str = "batch",
                 transpose: bool = False, output_padding: int = 0, resize_to=None):
        super().__init__()
        if resize_to is not None:  # upsampling by nearest-neighbour resize, then convolution
            first = nn.Sequential(nn.Upsample(size=resize_to, mode="nearest"), nn.Conv2d(c_in, c_out, 3, 1, 1))
            skip = nn.Sequential(nn.Upsample(size=resize_to, mode="nearest"), nn.Conv2d(c_in, c_out, 1))
            stride = 2
        elif transpose:  # upsampling ×2 to an exact side via output_padding
            first = nn.ConvTranspose2d(c_in, c_out, 3, stride, 1, output_padding=output_padding)
            skip = nn.ConvTranspose2d(c_in, c_out, 1, stride, output_padding=output_padding)
        else:
            first = nn.Conv2d(c_in, c_out, 3, stride, 1)
            skip = nn.Conv2d(c_in, c_out, 1, stride)
        self.body = nn.Sequential(first, norm_layer(norm, c_out), nn.ReLU(inplace=True),
                                  nn.Conv2d(c_out, c_out, 3, 1, 1), norm_layer(norm, c_out))
        self.skip = skip if (c_in != c_out or stride != 1) else nn.Identity()

    def forward(self, x):
        return F.relu(self.body(x) + self.skip(x))


def bottleneck_size(hw: Tuple[int, int], levels: int) -> Tuple[int, int]:
    h, w = hw
    for _ in range(levels - 1):
        h, w = halve(h), halve(w)
    return h, w


class Encoder(nn.Module):
    """x → q(z|x) = N(m, diag(v)), v = softplus(·) + 1e-5 (the paper's code)."""

    def __init__(self, image_shape: Sequence[int], latent_dim: int = 128,
                 channels: Sequence[int] = (64, 128, 256, 512), blocks: int = 2, norm: str = "batch"):
        super().__init__()
        c = image_shape[0]
        layers = [nn.Conv2d(c, channels[0], 3, 1, 1), norm_layer(norm, channels[0]), nn.ReLU(inplace=True)]
        layers += [ResidualBlock(channels[0], channels[0], norm=norm) for _ in range(blocks)]
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            layers.append(ResidualBlock(c_in, c_out, stride=2, norm=norm))
            layers += [ResidualBlock(c_out, c_out, norm=norm) for _ in range(blocks - 1)]
        layers += [nn.Conv2d(channels[-1], channels[-1], 1), norm_layer(norm, channels[-1]),
                   nn.ReLU(inplace=True), nn.AdaptiveMaxPool2d(1), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.loc = nn.Linear(channels[-1], latent_dim)
        self.var = nn.Linear(channels[-1], latent_dim)

    def forward(self, x: torch.Tensor) -> Normal:
        h = self.body(x)
        # no argument validation: a NaN must reach the trainer's detector, which names the step
        return Normal(self.loc(h), (F.softplus(self.var(h)) + MIN_VARIANCE).sqrt(), validate_args=False)


class DecoderBody(nn.Module):
    """z → features (head_channels, H, W) at the image's exact resolution.

    The last layer is a 1×1 convolution, normalisation and ReLU, as in the paper's code
    (64 → 64). `head_channels` sets its width, the number of feature maps the observation
    heads combine; by default channels[0]. Each of P's R columns is a combination of
    these maps and a constant, so a head that sees fewer maps than R + 1 cannot give the
    components shapes of their own.
    """

    def __init__(self, image_shape: Sequence[int], latent_dim: int = 128,
                 channels: Sequence[int] = (64, 128, 256, 512), blocks: int = 2, norm: str = "batch",
                 upsample: str = "transpose", head_channels: Optional[int] = None):
        super().__init__()
        head_channels = channels[0] if head_channels is None else head_channels
        if head_channels < 1:
            raise ValueError(f"head_channels must be a positive number of feature maps, got {head_channels}")
        if upsample not in UPSAMPLING:
            raise ValueError(f"unknown upsampling '{upsample}'; use one of {UPSAMPLING}")
        _, H, W = image_shape
        sides = [(H, W)]
        for _ in range(len(channels) - 1):
            sides.append((halve(sides[-1][0]), halve(sides[-1][1])))
        h0, w0 = sides[-1]
        # a transposed conv whose kernel is the whole bottleneck: a dense map z → F×h×w
        layers = [nn.ConvTranspose2d(latent_dim, latent_dim, (h0, w0)),
                  nn.Conv2d(latent_dim, channels[-1], 1), norm_layer(norm, channels[-1]),
                  nn.ReLU(inplace=True), ResidualBlock(channels[-1], channels[-1], norm=norm)]
        for level in range(len(channels) - 1, 0, -1):
            th, tw = sides[level - 1]
            out_pad = (1 - th % 2, 1 - tw % 2)  # 2·ceil(t/2) − 1 + p = t
            layers.append(ResidualBlock(channels[level], channels[level - 1], stride=2, norm=norm,
                                        transpose=True, output_padding=out_pad,
                                        resize_to=(th, tw) if upsample == "resize" else None))
            layers += [ResidualBlock(channels[level - 1], channels[level - 1], norm=norm)
                       for _ in range(blocks - 1)]
        layers += [ResidualBlock(channels[0], channels[0], norm=norm),
                   nn.Conv2d(channels[0], head_channels, 1), norm_layer(norm, head_channels), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)
        self.latent_dim, self.out_channels = latent_dim, head_channels

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(z[:, :, None, None])


def model_device(model: nn.Module) -> torch.device:
    """The device a model's parameters live on."""
    return next(model.parameters()).device


def make_head(kind: str, c_in: int, image_shape: Sequence[int], rank: int, eps: float,
              stencil: int = 3) -> nn.Module:
    """The decoder head of the registered observation model `kind` (sosvae_core.observations)."""
    return get_observation_model(kind).make_head(c_in, image_shape, rank=rank, eps=eps, stencil=stencil)


def prior_codes(latent_dim: int, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """n codes z ~ p(z) = N(0, I), (n, latent_dim) float32, from `generator` (the global RNG if None).

    Drawn on the CPU, so that a seed gives the same codes on every device; each call takes
    n·latent_dim normals from the generator's stream, in order."""
    return torch.randn(n, latent_dim, generator=generator, device="cpu")


class VAE(nn.Module):
    """The VAE of the paper; `kind` picks the observation model, all else is shared."""

    def __init__(self, image_shape: Sequence[int], kind: str = "sos", latent_dim: int = 128,
                 rank: int = 25, eps: float = 1e-5, channels: Sequence[int] = (64, 128, 256, 512),
                 blocks: int = 2, norm: str = "batch", stencil: int = 3, upsample: str = "transpose",
                 head_channels: Optional[int] = None):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.kind, self.latent_dim, self.rank = kind, latent_dim, rank
        self.encoder = Encoder(image_shape, latent_dim, channels, blocks, norm)
        self.decoder = DecoderBody(image_shape, latent_dim, channels, blocks, norm, upsample, head_channels)
        self.head = make_head(kind, self.decoder.out_channels, image_shape, rank, eps, stencil)
        self._inference_body = None  # the decoder body compiled for evaluation (`compiled_decoders`)

    def encode(self, x: torch.Tensor) -> Normal:
        return self.encoder(x)

    def decode(self, z: torch.Tensor, validate: bool = False):
        """z (B, latent) → the observation distribution over flattened images (B, S)."""
        fast = getattr(self, "_inference_body", None) is not None and not torch.is_grad_enabled() and not self.training
        h = self._inference_body(z) if fast else self.decoder(z)
        with torch.autocast(h.device.type, enabled=False):  # the likelihood stays float32
            return self.head(h.float(), validate=validate)

    def forward(self, x: torch.Tensor):
        q = self.encode(x)
        return q, self.decode(q.rsample())

    def variance_parameters(self):
        """Parameters frozen during mean-only pre-training (everything but the mean)."""
        return self._head_parameters(self.head.variance_prefixes)

    def diagonal_parameters(self):
        """The variance parameters of a per-pixel variance on a log scale (`Config.diagonal_lr_factor`)."""
        return self._head_parameters(self.head.diagonal_prefixes)

    def _head_parameters(self, prefixes):
        return [p for n, p in self.head.named_parameters() if n.split(".")[0] in prefixes]

    @torch.no_grad()
    def sample_prior(self, n: int, generator: torch.Generator | None = None):
        """p(x | z) for n codes z from the prior (`prior_codes`)."""
        return self.decode(prior_codes(self.latent_dim, n, generator).to(model_device(self)))


@contextmanager
def compiled_decoders(model: nn.Module):
    """Within this block, every VAE in `model` decodes through its decoder body compiled for
    evaluation: torch.compile with freezing, which folds batch normalisation into the
    convolutions and treats the weights as constants. It applies in evaluation mode under
    no_grad (elsewhere the eager decoder runs), its decodes equal the eager ones to float32
    rounding, and it pays where one model decodes many codes (the K-sample bound: 1.4× in
    all on a CPU, the decoder body alone 2.4–3×; benchmarks/README.md). Each new batch size
    compiles once, a few seconds.
    The weights are read when it compiles: do not change them inside the block."""
    vaes = [m for m in model.modules() if isinstance(m, VAE)]
    # torch.compile's first use in a process turns torch.distributions' default argument
    # validation off for good; the block leaves it as it found it
    validate = torch.distributions.Distribution._validate_args
    for vae in vaes:
        vae._inference_body = torch.compile(vae.decoder.forward, dynamic=False, options={"freezing": True})
    try:
        yield model
    finally:
        for vae in vaes:
            vae._inference_body = None
        torch.distributions.Distribution.set_default_validate_args(validate)


def build_model(cfg, image_shape) -> nn.Module:
    """The model a config trains (`sosvae_core.configs.Config`): a VAE with the registered
    observation model's head, or the registered standalone model (no encoder, no latent)."""
    spec = get_observation_model(cfg.model)
    if not spec.latent:
        return spec.standalone(image_shape, rank=cfg.rank, eps=cfg.eps, seed=cfg.seed)
    return VAE(image_shape, cfg.model, cfg.latent_dim, cfg.rank, cfg.eps, cfg.channels,
               cfg.blocks, cfg.norm, cfg.stencil, cfg.upsample, cfg.head_channels)
