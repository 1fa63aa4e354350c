"""What the torchrun GPU tests share: joining the job, one seed for the run, steps that report a
failure and go on (so every rank reaches the same collective calls), and the exit status."""

import os
import time

import torch
import torch.distributed as dist

import weft


class Run:
    """One test program on one rank: `world`, `W`, `rank`, and `gen`, a CUDA generator seeded
    from a seed that rank 0 draws fresh for the run and prints."""

    def __init__(self, title: str):
        local = int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local))
        self.world = weft.init()
        self.W, self.rank = self.world.size, self.world.rank
        assert self.W == dist.get_world_size() and self.rank == dist.get_rank()
        seed = torch.tensor([time.time_ns() % (1 << 31)], device="cuda")
        dist.broadcast(seed, 0)
        self.gen = torch.Generator(device="cuda").manual_seed(int(seed.item()) + self.rank)
        self.title = title
        self.failures = 0
        self.say(f"{title}: {self.W} ranks, seed {int(seed.item())}")

    def say(self, line: str) -> None:
        if self.rank == 0:
            print(line, flush=True)

    def step(self, name: str, fn) -> None:
        """Runs fn(); prints "name: ok" (with fn's result, if any) on rank 0, or the failure on
        the rank that saw it."""
        try:
            result = fn()
            self.say(f"  {name}: ok{'' if result is None else f' ({result})'}")
        except Exception as e:  # report and go on, so every rank reaches the same calls
            self.failures += 1
            print(f"rank {self.rank}: {name}: FAILED: {type(e).__name__}: {e}", flush=True)

    def expect_rejected(self, what: str, call) -> None:
        """call() must raise weft.InvalidArgument (its first line is printed on rank 0)."""
        try:
            call()
        except weft.InvalidArgument as e:
            self.say(f"  rejects {what}: {str(e).splitlines()[0][:140]}")
        else:
            raise AssertionError(f"{what} was accepted")

    def finish(self, *operators) -> int:
        """Closes the operators, leaves the job; 0 when no rank failed."""
        torch.cuda.synchronize()
        total = torch.tensor([self.failures], device="cuda")
        dist.all_reduce(total)
        self.say(f"{self.title}: " + ("ok" if total.item() == 0 else f"{total.item()} failures"))
        for op in operators:
            op.close()
        dist.destroy_process_group()
        return 0 if total.item() == 0 else 1
