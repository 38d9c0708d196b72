"""Test helper, not a test: the real command line (`python -m sosvae_core ...`), and
each process also saves what it trained with, so that the test can compare ranks.

    python -m torch.distributed.run --standalone --nproc_per_node=2 \
        tests/_ddp_worker.py DUMP_DIR train --config lfw ...

Every rank writes DUMP_DIR/rank<r>.pt: its final weights and multipliers, and per
step the image indices it trained on, the gradient norm (after DDP's all-reduce)
and the multipliers after the step. Run without torchrun, it is the single-process
reference (rank0.pt only). With DDP_TEST_FLOAT64=1 it trains in float64.
"""
import os
import sys
from pathlib import Path

import torch

from sosvae_core import train
from sosvae_core.__main__ import main

dump_dir = Path(sys.argv[1])
plain_fit, plain_step = train.Trainer.fit, train.Trainer.train_step


def train_step(self, idx, pretrain):
    row = plain_step(self, idx, pretrain)
    self.__dict__.setdefault("record", []).append(
        {"idx": idx.tolist(), "grad_norm": row["grad_norm"], "lambda_kl": self.multipliers.kl.item(),
         "lambda_entropy": self.multipliers.entropy.item()})
    return row


def fit(self, *args, **kwargs):
    model = plain_fit(self, *args, **kwargs)
    torch.save({"model": self.model.state_dict(), "multipliers": self.multipliers.state_dict(),
                "step": self.step, "world": self.world, "steps": getattr(self, "record", [])},
               dump_dir / f"rank{self.rank}.pt")
    return model


train.Trainer.train_step, train.Trainer.fit = train_step, fit
if os.environ.get("DDP_TEST_FLOAT64"):
    # Everything in float64, so that summation order no longer shows: the model is built
    # in float64, and the `.float()` casts of the trainer and the VAE (to keep the
    # likelihood out of autocast) become float64 casts. Test-only.
    torch.set_default_dtype(torch.float64)
    torch.Tensor.float = torch.Tensor.double
sys.exit(main(sys.argv[2:]))
