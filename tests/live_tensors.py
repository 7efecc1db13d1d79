"""Count the bytes of tensors that operations create, while they are alive (tests only).

PyTorch has no allocator statistics for CPU tensors, so :class:`LiveTensors` watches every aten
operation through a ``TorchDispatchMode``: an output whose storage did not exist before (not an
input's, not a view of a watched one) is new; its bytes count as live until the last tensor that
shares its storage is freed (weak references; a tensor that autograd still saves stays alive).
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveTensors(TorchDispatchMode):
    """Live bytes of the tensors created inside the mode: ``live`` now, ``peak`` so far.

    ``created`` lists the shape of every new tensor in order.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.created: list[tuple[int, ...]] = []
        self._holders: dict[int, list[int]] = {}  # storage address -> [bytes, live tensors]

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {
            t.untyped_storage().data_ptr()
            for t in tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor)
        }
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._watch(t, inputs)
        return out

    def _watch(self, t: torch.Tensor, inputs: set[int]) -> None:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr in self._holders:
            self._holders[ptr][1] += 1
        elif ptr in inputs or storage.nbytes() == 0:
            return  # an input's storage (a view of it, an out= buffer): not created here
        else:
            self._holders[ptr] = [storage.nbytes(), 1]
            self.created.append(tuple(t.shape))
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
        weakref.finalize(t, self._release, ptr)

    def _release(self, ptr: int) -> None:
        entry = self._holders[ptr]
        entry[1] -= 1
        if entry[1] == 0:
            self.live -= entry[0]
            del self._holders[ptr]
