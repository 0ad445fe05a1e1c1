"""Train a model with fastlstm.torch.LSTM under DistributedDataParallel on
two processes (torch.multiprocessing, the gloo backend), each on its half of
every batch, and the same model on one process with the whole batches; save
both models' weights for tests/test_torch_ddp.py to compare.

    python torch_ddp.py FOLDER    (writes FOLDER/ddp.pt, single.pt and initial.pt)
"""
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

import fastlstm
import fastlstm.torch as fltorch

WORLD_SIZE = 2
BATCH, STEPS, FEATURES, UNITS = 8, 6, 3, 8
BATCHES = 3


class Regressor(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = fltorch.LSTM(FEATURES, UNITS, num_layers=2, batch_first=True,
                                 dtype=torch.float64)
        self.head = torch.nn.Linear(UNITS, 1, dtype=torch.float64)

    def forward(self, x):
        return self.head(self.lstm(x)[0][:, -1])


def model():
    torch.manual_seed(0)
    return Regressor()


def batches():
    generator = torch.Generator().manual_seed(1)
    for _ in range(BATCHES):
        x = torch.randn(BATCH, STEPS, FEATURES, generator=generator, dtype=torch.float64)
        yield x, x[:, :, 0].sum(1, keepdim=True)


def train(module, rank=0, size=1):
    """SGD on the mean squared error of this rank's rows of every batch: DDP
    averages the ranks' gradients, which is the gradient of the whole batch's."""
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    rows = BATCH // size
    for x, y in batches():
        x, y = x[rank * rows:(rank + 1) * rows], y[rank * rows:(rank + 1) * rows]
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(module(x), y).backward()
        optimizer.step()


def worker(rank, folder):
    # Two processes share the machine's cores: one thread each.
    torch.set_num_threads(1)
    fastlstm.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder / 'rendezvous'}", rank=rank,
                            world_size=WORLD_SIZE)
    try:
        ddp = DistributedDataParallel(model())
        train(ddp, rank, WORLD_SIZE)
        if rank == 0:
            torch.save(ddp.module.state_dict(), folder / "ddp.pt")
    finally:
        dist.destroy_process_group()


def main(folder):
    folder = Path(folder)
    # An exception in either process ends both, and raises here.
    mp.spawn(worker, args=(folder,), nprocs=WORLD_SIZE, join=True)
    single = model()
    torch.save(single.state_dict(), folder / "initial.pt")
    train(single)
    torch.save(single.state_dict(), folder / "single.pt")


if __name__ == "__main__":
    main(sys.argv[1])
