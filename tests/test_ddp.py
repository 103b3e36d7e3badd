"""DistributedDataParallel: two gloo processes on 127.0.0.1 train to the same parameters as one process on
the whole batch, without find_unused_parameters."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import fastrnn

STEPS = 3
WORLD = 2


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = fastrnn.RNN(5, 12, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(24, 3)

    def forward(self, x):
        out, h_n = self.rnn(x)
        return self.head(out) + h_n.sum(0, keepdim=True).transpose(0, 1)[..., :3]


def _data():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(8, 6, 5, generator=gen), torch.randn(8, 6, 3, generator=gen)


def _train(model, x, y):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(STEPS):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def _worker(rank, port, out_path):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(0)
        model = DistributedDataParallel(Model())
        x, y = _data()
        shard = slice(rank * 4, rank * 4 + 4)
        _train(model, x[shard], y[shard])
        if rank == 0:
            torch.save(model.module.state_dict(), out_path)
        dist.barrier()  # a rank that tears gloo down while its peer still talks to it aborts the process
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_equal_one_process_on_the_full_batch(tmp_path):
    out_path = str(tmp_path / "ddp.pt")
    mp.spawn(_worker, args=(_free_port(), out_path), nprocs=WORLD, join=True)
    torch.manual_seed(0)
    single = Model()
    _train(single, *_data())
    got = torch.load(out_path)
    for name, param in single.state_dict().items():
        torch.testing.assert_close(got[name], param, rtol=1e-5, atol=1e-6, msg=name)
