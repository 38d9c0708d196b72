"""Synthetic portraits: the bundled default data set, made on the fly (no download).

A face VAE on a CPU needs a few thousand aligned faces; the only faces that ship
with our dependencies are the 100 tiny 25×25 crops of scikit-image's LFW subset, on
which a VAE learns one average face. These portraits are drawn instead: an aligned
head (face, hair, neck, clothes) on a background, like aligned CelebA, where the
colour of each region (skin tone, hair colour, background, clothes), the light
direction and the head's size, position and hair length vary independently from
image to image.

That is the structure the paper's claims are about: the covariance of a pixel
should follow its region (a skin pixel co-varies with the skin, not with the
background), samples should vary hair colour, skin tone and background coherently
(Figs. 1, 4, 5), and an edit of the hair should recolour the hair, not the face
(Fig. 6). Results on portraits are results on synthetic images; point the data root
at CelebA for the paper's experiments.
"""
from __future__ import annotations

import numpy as np

HEIGHT, WIDTH = 44, 36  # CelebA's aspect ratio (218×178), at a CPU-friendly size
POOL = 4000  # portraits drawn; a data set's seeded subset picks from these
POOL_SEED = 0


def _ellipse(yy, xx, cy, cx, ry, rx):
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def render(n: int = POOL, seed: int = POOL_SEED, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """n portraits as uint8 (n, 3, height, width), the same for the same seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    out = np.empty((n, 3, height, width), dtype=np.uint8)
    skin_tones = np.array([[0.96, 0.80, 0.69], [0.89, 0.67, 0.53], [0.76, 0.53, 0.38],
                           [0.55, 0.37, 0.25], [0.36, 0.23, 0.15]])
    hair_colours = np.array([[0.08, 0.06, 0.05], [0.30, 0.18, 0.10], [0.55, 0.36, 0.18],
                             [0.85, 0.70, 0.40], [0.60, 0.20, 0.08], [0.70, 0.70, 0.70]])
    for i in range(n):
        # pose and shape vary enough that no linear model of the pixels captures them:
        # the decoder's mean has to follow the latent code
        cx = 0.5 + rng.uniform(-0.1, 0.1)
        cy = 0.47 + rng.uniform(-0.06, 0.06)
        scale = rng.uniform(0.75, 1.2)
        ry, rx = 0.22 * scale * rng.uniform(0.9, 1.1), 0.25 * scale * rng.uniform(0.85, 1.1)
        mix = rng.dirichlet([0.6] * len(skin_tones))
        skin = np.clip(mix @ skin_tones + rng.normal(0, 0.03, 3), 0, 1)
        hair = np.clip(hair_colours[rng.integers(len(hair_colours))] + rng.normal(0, 0.05, 3), 0, 1)
        background = rng.uniform(0.2, 0.85, 3)
        clothes = rng.uniform(0.1, 0.9, 3)
        # background with a gentle vertical gradient
        img = background[:, None, None] * (0.85 + 0.3 * yy)[None]
        # shoulders and clothes, then the neck
        shoulders = _ellipse(yy, xx, cy + 0.61 * scale, cx, 0.22 * scale, 0.48 * scale)
        img = np.where(shoulders[None], clothes[:, None, None], img)
        neck = (np.abs(xx - cx) < rx * 0.42) & (yy > cy) & (yy < 0.95)
        img = np.where(neck[None], (skin * 0.85)[:, None, None], img)
        # hair: behind the head, longer or shorter
        length = rng.uniform(0.0, 0.3) * scale
        hair_back = _ellipse(yy, xx, cy - 0.03, cx, ry * 1.2, rx * 1.22) | (
            (np.abs(xx - cx) < rx * 1.18) & (yy > cy) & (yy < cy + length))
        img = np.where(hair_back[None], hair[:, None, None], img)
        # face, lit from one side
        face = _ellipse(yy, xx, cy + 0.02, cx, ry, rx)
        light = rng.uniform(-0.35, 0.35)
        shade = 1.0 + light * (xx - cx) / rx
        img = np.where(face[None], np.clip(skin[:, None, None] * shade[None], 0, 1), img)
        # fringe over the forehead
        fringe = _ellipse(yy, xx, cy - ry * 0.95, cx, ry * rng.uniform(0.35, 0.6), rx * 1.05) & face
        img = np.where(fringe[None], hair[:, None, None], img)
        # eyes, brows and mouth, dark
        eye_y, eye = cy, 0.02 * scale
        feature = (_ellipse(yy, xx, eye_y, cx - rx * 0.4, eye, 2 * eye) | _ellipse(yy, xx, eye_y, cx + rx * 0.4, eye, 2 * eye)
                   | _ellipse(yy, xx, cy + ry * 0.55, cx, 0.75 * eye, rx * rng.uniform(0.25, 0.45)))
        img = np.where(feature[None], (skin * 0.35)[:, None, None], img)
        brows = (_ellipse(yy, xx, cy - 0.05 * scale, cx - rx * 0.4, 0.6 * eye, 2.5 * eye)
                 | _ellipse(yy, xx, cy - 0.05 * scale, cx + rx * 0.4, 0.6 * eye, 2.5 * eye))
        img = np.where(brows[None], (hair * 0.8)[:, None, None], img)
        out[i] = np.rint(np.clip(_blur(img), 0, 1) * 255).astype(np.uint8)
    return out


def _blur(img: np.ndarray) -> np.ndarray:
    """A 3×3 binomial blur per channel (soft edges, as a photo's), edges replicated."""
    k = np.array([0.25, 0.5, 0.25])
    p = np.pad(img, ((0, 0), (1, 1), (1, 1)), mode="edge")
    p = k[0] * p[:, :-2] + k[1] * p[:, 1:-1] + k[2] * p[:, 2:]
    return k[0] * p[:, :, :-2] + k[1] * p[:, :, 1:-1] + k[2] * p[:, :, 2:]
