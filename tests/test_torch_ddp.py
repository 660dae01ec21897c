"""The generated Layer trains under DistributedDataParallel: two gloo processes on CPU over
loopback (127.0.0.1) take half the batch each; their averaged gradients, and the weights
after a few SGD steps, equal one process's on the whole batch."""

from __future__ import annotations

import os
import socket
import sys
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import novolstm
from novolstm.testing import assert_close, tolerance

SPEC, B, T, I, H, STEPS, LR = "novolstm", 4, 5, 3, 4, 3, 0.1


def make_layer():
    torch.manual_seed(0)
    return novolstm.get_layer("torch", spec=SPEC)(
        I, H, num_layers=2, bidirectional=True, batch_first=True, dtype=torch.float64, seed=3
    )


def data():
    rng = np.random.default_rng(11)
    x = torch.tensor(rng.normal(size=(B, T, I)))
    lengths = torch.tensor([5, 3, 4, 1])
    target = torch.tensor(rng.normal(size=(B, T, 2 * H)))
    return x, lengths, target


def train(layer, x, lengths, target, rows):
    """STEPS of SGD on the mean squared error over all B rows; this process sees ``rows``."""
    opt = torch.optim.SGD(layer.parameters(), lr=LR)
    first_grads = None
    for step in range(STEPS):
        opt.zero_grad()
        out, _ = layer(x[rows], lengths=lengths[rows])
        # Mean over this process's rows: DDP averages over processes, giving the mean over all B.
        loss = ((out - target[rows]) ** 2).sum() / len(range(B)[rows])
        loss.backward()
        if step == 0:
            first_grads = {n: p.grad.detach().clone() for n, p in layer.named_parameters()}
        opt.step()
    return first_grads


def _worker(rank, world, port, out_dir):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group(
        "gloo",
        rank=rank,
        world_size=world,
        init_method=f"tcp://127.0.0.1:{port}",
        timeout=__import__("datetime").timedelta(seconds=60),
    )
    try:
        torch.set_num_threads(1)
        layer = make_layer()
        model = torch.nn.parallel.DistributedDataParallel(layer)
        x, lengths, target = data()
        half = B // world
        grads = train(model, x, lengths, target, slice(rank * half, (rank + 1) * half))
        grads = {n.removeprefix("module."): g for n, g in grads.items()}
        torch.save({"grads": grads, "params": layer.state_dict()}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_gloo_processes_equal_one_process(tmp_path, monkeypatch):
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")  # loopback only
    # Spawned workers unpickle _worker by its module name (tests.test_torch_ddp under pytest's
    # importlib mode): the repository root goes at the END of sys.path, which the workers
    # inherit, so that they find this file while novolstm still comes from the installed package.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if _worker.__module__.partition(".")[0] == "tests":
        monkeypatch.setattr(sys, "path", sys.path + [root])
    context = mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=False)
    deadline = time.monotonic() + 240
    try:
        while not context.join(timeout=5):
            if time.monotonic() > deadline:
                pytest.fail("the DDP workers did not finish within 240 s")
    finally:
        for p in context.processes:  # only the two workers this test started
            if p.is_alive():
                p.terminate()
    single = make_layer()
    x, lengths, target = data()
    grads = train(single, x, lengths, target, slice(0, B))
    tol = tolerance("float64", T * 2, kind="gradients")
    for rank in (0, 1):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        assert result["grads"].keys() == grads.keys()
        for name, g in grads.items():
            assert_close(result["grads"][name].numpy(), g.numpy(), tol, what=f"rank {rank} grad {name}")
        for name, p in single.state_dict().items():
            assert_close(result["params"][name].numpy(), p.numpy(), tol, what=f"rank {rank} {name} after {STEPS} steps")
