"""Fake image folders for the data tests (sosvae_core.data): small JPEG/PNG files written
with PIL under tmp_path. The real-data tests read $SOSVAE_DATA_ROOT and skip when it is unset."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sosvae_core.paths import ENV_DATA_ROOT

REAL_ROOT = os.environ.get(ENV_DATA_ROOT, "").strip()
needs_real_data = pytest.mark.skipif(
    not REAL_ROOT, reason=f"{ENV_DATA_ROOT} is not set: real CelebA/brain data unavailable"
)


def write_images(folder: Path, n: int, size=(178, 218), mode="RGB", ext=".jpg", start=1, seed=0) -> list[Path]:
    """n smooth random images named NNNNNN.ext; size is PIL (W, H)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    paths = []
    for k in range(n):
        small = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
        im = Image.fromarray(small, "RGB").resize((w, h), Image.Resampling.BILINEAR).convert(mode)
        path = folder / f"{start + k:06d}{ext}"
        im.save(path)
        paths.append(path)
    return paths


def write_partition(folder: Path, names: list[str], labels: list[int]) -> None:
    (folder / "list_eval_partition.txt").write_text("".join(f"{n} {l}\n" for n, l in zip(names, labels)))


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg
