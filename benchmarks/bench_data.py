"""What the decoded-image cache's checksum costs next to reading the cache (not a test).

The cache and packed datasets carry a crc32 of their pixels (torch.load does not notice
flipped bytes inside a tensor); this times that checksum against torch.load of the same
uint8 tensor from a file, measured in the same run.

    python benchmarks/bench_data.py [--mib 256] [--repeats 3]
"""
import argparse
import os
import tempfile

import torch

from sosvae_core.data.store import _checksum
from sosvae_core.timing import median_seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=256, help="tensor size in MiB")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    images = torch.randint(0, 256, (args.mib, 1024, 1024), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "images.pt")
        torch.save({"images": images}, path)
        load = median_seconds(lambda: torch.load(path, weights_only=True), args.repeats)
    crc = median_seconds(lambda: _checksum(images), args.repeats)
    gib = args.mib / 1024
    print(f"uint8 tensor of {args.mib} MiB, {torch.get_num_threads()} thread(s), torch {torch.__version__}")
    print(f"torch.load (page cache warm)  {load:7.3f} s   {load / gib:6.3f} s/GiB")
    print(f"crc32 checksum                {crc:7.3f} s   {crc / gib:6.3f} s/GiB   ({crc / load:.2f}× torch.load)")


if __name__ == "__main__":
    main()
