"""Several processes through an existing launcher (``torchrun`` / ``accelerate launch``).

``accelerate``'s ``PartialState`` reads the launcher's environment and starts the process group
(gloo on CPU, nccl on GPUs). vgrl then keeps data parallelism explicit and exact: every process
draws the same prompts and seeds, rolls out its own whole prompt groups, and gradients are averaged
with one all-reduce per optimiser step — so N processes equal one process on the same global batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch import Tensor


@dataclass(frozen=True)
class Dist:
    """This process's rank among ``world`` processes."""

    rank: int = 0
    world: int = 1
    device: str = "cpu"  # the launcher's device (accelerate's PartialState): cuda:LOCAL_RANK, or cpu

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This process's share of ``n`` items (``n`` divisible by ``world``)."""
        if n % self.world:
            raise ValueError(f"{n} items cannot be split evenly over {self.world} processes")
        per = n // self.world
        return slice(self.rank * per, (self.rank + 1) * per)

    def mean_(self, tensors: list[Tensor]) -> None:
        """Average ``tensors`` in place over processes (one flattened all-reduce)."""
        if self.world == 1 or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        torch_dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for t in tensors:
            t.copy_(flat[offset: offset + t.numel()].view_as(t))
            offset += t.numel()

    def any(self, flag: bool) -> bool:
        """True on every process if ``flag`` is true on any."""
        if self.world == 1:
            return flag
        t = torch.tensor([float(flag)], device=self.device)  # nccl reduces tensors on the GPU only
        torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
        return bool(t.item())

    def gather(self, t: Tensor) -> Tensor:
        """Concatenate equally-shaped ``t`` of every process along dim 0, in rank order."""
        if self.world == 1:
            return t
        parts = [torch.empty_like(t) for _ in range(self.world)]
        torch_dist.all_gather(parts, t.contiguous())
        return torch.cat(parts)

    def barrier(self) -> None:
        if self.world > 1:
            torch_dist.barrier()


def init(cpu: bool | None = None) -> Dist:
    """The process group the launcher describes (a single process when launched plainly).

    ``cpu``: a CPU run (gloo process group, device cpu); None: CPU exactly when CUDA is unavailable.
    """
    from accelerate import PartialState

    if cpu is None:
        cpu = not torch.cuda.is_available()
    state = PartialState(cpu=cpu)  # cpu=True: gloo process group on CPU machines; else nccl, cuda:LOCAL_RANK
    return Dist(state.process_index, state.num_processes, str(state.device))
