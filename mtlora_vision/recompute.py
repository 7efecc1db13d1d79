"""Lean activation memory: cheap element-wise outputs recomputed in the backward pass.

A training step keeps, for the backward pass, every tensor an operation saves. Many of them are
outputs of cheap element-wise work (LayerNorm, GELU, dropout, BatchNorm + ReLU) that the next
layer saves as its input, while the element-wise operation has already saved *its* input.
Inside :func:`lean_activations`, an output computed by :func:`recomputable` is not stored when a
later operation saves it: a recipe (the function and its inputs) is stored instead and the output
is recomputed, without autograd, when the backward pass needs it. Recipe inputs are themselves
stored as recipes where possible, so a chain (LayerNorm -> dropout -> low-rank projection) keeps
only the chain's first input and a dropout mask.

Dropout (:func:`lean_dropout`) keeps its mask as ``bool`` (1 byte per element instead of the 4 of
a float32 mask); the mask is drawn exactly as ``F.dropout`` draws it, with the same values.

Recomputation is exact: the same function on the same inputs, with the autocast state of the
forward pass. Restrictions: a recomputable function must be deterministic and must not touch
module state (BatchNorm passes ``recompute=`` a variant without running statistics), and a
recorded output must not be modified in place after it has been saved.

Activation checkpointing (``torch.utils.checkpoint``) stores nothing inside its region and takes
precedence there; :func:`lean_mode` re-establishes the lean implementations during its
recomputation, so both passes draw the same dropout masks.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_STATE = threading.local()

#: The element-wise work that lean mode can recompute, by part name: the backbone's LayerNorms
#: and window partition, its GELUs (the task streams' fused with their down-projections, which
#: read fc1's task outputs in low-rank form), LoRA dropout, and the decoder heads' BatchNorm + ReLU.
LEAN_PARTS = ("norm", "gelu", "dropout", "heads")
#: What ``True`` selects. The heads' BatchNorm + ReLU is left out: without activation
#: checkpointing, recomputing it cost about 10% of a 448x448 training step on this project's CPU
#: and did not lower the peak RSS (docs/speed.md).
DEFAULT_LEAN_PARTS = ("norm", "gelu", "dropout")
#: What ``True`` selects in a model that checkpoints activations, where memory comes first: the
#: heads' BatchNorm + ReLU too. Their stored outputs set the checkpointed step's peak.
CHECKPOINTING_LEAN_PARTS = (*DEFAULT_LEAN_PARTS, "heads")


def lean_parts(setting: bool | Iterable[str], checkpointing: bool = False) -> frozenset[str]:
    """The parts a ``recompute_elementwise`` setting selects.

    Args:
        setting: False (none), True (:data:`DEFAULT_LEAN_PARTS`, or
            :data:`CHECKPOINTING_LEAN_PARTS` with ``checkpointing``), or part names from
            :data:`LEAN_PARTS`, used as given; ``"all"`` stands for every part.
        checkpointing: Whether the model checkpoints activations in any stage.

    Raises:
        ValueError: If a name is not a part.
    """
    if isinstance(setting, bool):
        if not setting:
            return frozenset()
        return frozenset(CHECKPOINTING_LEAN_PARTS if checkpointing else DEFAULT_LEAN_PARTS)
    names = [setting] if isinstance(setting, str) else list(setting)
    if "all" in names:
        names = [n for n in names if n != "all"] + list(LEAN_PARTS)
    unknown = [n for n in names if n not in LEAN_PARTS]
    if unknown:
        raise ValueError(
            f"recompute_elementwise={setting!r}: unknown part(s) {unknown}; use True, False, "
            f"'all' or a list of {list(LEAN_PARTS)}."
        )
    return frozenset(names)


def lean_enabled(part: str) -> bool:
    """Whether the lean implementation of ``part`` is active (inside :func:`lean_mode`)."""
    return part in getattr(_STATE, "lean", frozenset())


@contextlib.contextmanager
def lean_mode(enabled: bool | Iterable[str] = True) -> Iterator[None]:
    """Use the lean implementations of the selected parts (:func:`lean_parts`)."""
    previous = getattr(_STATE, "lean", frozenset())
    _STATE.lean = lean_parts(enabled)
    try:
        yield
    finally:
        _STATE.lean = previous


class _Recipe:
    """How to recompute one recorded output: ``fn(*args)`` in a given autocast state."""

    __slots__ = ("args", "autocast", "cache", "fn", "pending")

    def __init__(self, fn: Callable[..., Tensor], args: tuple, autocast: tuple) -> None:
        self.fn = fn
        self.args = args
        self.autocast = autocast
        self.pending = 0  # saves not yet unpacked; the recomputed value is cached while > 1
        self.cache: Tensor | None = None

    def value(self) -> Tensor:
        if self.cache is not None:
            return self.cache
        args = tuple(a.view_of_value() if isinstance(a, _Packed) else a for a in self.args)
        device, dtype, enabled = self.autocast
        with torch.no_grad(), torch.autocast(device, dtype=dtype, enabled=enabled):
            out = self.fn(*args)
        if self.pending > 1:
            self.cache = out
        return out


class _Packed:
    """A tensor stored as a view of a recipe's output (a saved tensor or a recipe's input)."""

    __slots__ = ("offset", "output", "recipe", "size", "stride", "version")

    def __init__(self, recipe: _Recipe, t: Tensor, output: Tensor) -> None:
        self.recipe = recipe
        self.size, self.stride, self.offset = t.size(), t.stride(), t.storage_offset()
        self.output, self.version = weakref.ref(output), output._version

    def view_of_value(self) -> Tensor:
        output = self.output()
        if output is not None and output._version != self.version:
            raise RuntimeError(_MODIFIED.format(f"{tuple(self.size)} {output.dtype}"))
        return self.recipe.value().as_strided(self.size, self.stride, self.offset)


_MODIFIED = (
    "one of the variables needed for gradient computation has been modified by an inplace "
    "operation (inside mtlora_vision.recompute.lean_activations): {}"
)


def _unpack(packed: Any) -> Any:
    """Unpack hook: a saved tensor, recomputed if it was stored as a recipe.

    Raises:
        RuntimeError: If the tensor was modified in place after it was saved (autograd's own
            check, which saved-tensor hooks switch off).
    """
    if isinstance(packed, tuple):
        t, version = packed
        if t._version != version:
            raise RuntimeError(_MODIFIED.format(f"{tuple(t.shape)} {t.dtype}"))
        return t
    out = packed.view_of_value()
    recipe = packed.recipe
    recipe.pending -= 1
    if recipe.pending <= 0:
        recipe.cache = None
    return out


class _Registry:
    """Recorded outputs by storage address (weak references; each output carries its recipe)."""

    def __init__(self) -> None:
        self.outputs: dict[int, weakref.ref] = {}

    def record(self, out: Tensor, fn: Callable[..., Tensor], args: tuple) -> None:
        device = out.device.type
        autocast = (device, torch.get_autocast_dtype(device), torch.is_autocast_enabled(device))
        inputs = tuple(self.find(a) or a.detach() if isinstance(a, Tensor) else a for a in args)
        # The recipe lives as long as the output or a saved view of it, no longer.
        out._lean_recipe = (_Recipe(fn, inputs, autocast), out._version)
        self.outputs[out.untyped_storage().data_ptr()] = weakref.ref(out)

    def find(self, t: Tensor) -> _Packed | None:
        """``t`` as a view of a recorded output, or None."""
        ptr = t.untyped_storage().data_ptr()
        ref = self.outputs.get(ptr)
        out = None if ref is None else ref()
        if out is None or out.untyped_storage().data_ptr() != ptr:
            return None  # not recorded, or freed and the address reused
        recipe, version = out._lean_recipe
        if out._version != version or t.dtype != out.dtype:
            return None  # modified in place since it was computed: store it as it is
        return _Packed(recipe, t, out)

    def pack(self, t: Tensor) -> Any:
        """Pack hook: a recipe for recorded outputs (and views of them), else the tensor."""
        packed = self.find(t)
        if packed is None:
            return t.detach(), t._version  # detached: no cycle through its grad_fn
        packed.recipe.pending += 1
        return packed


def recomputable(
    fn: Callable[..., Tensor],
    *args: Any,
    part: str | None = None,
    recompute: Callable[..., Tensor] | None = None,
) -> Tensor:
    """``fn(*args)``; inside :func:`lean_activations` its output is recomputed, not stored.

    Args:
        fn: A cheap, deterministic function of ``args`` (LayerNorm, GELU, a dropout mask).
        args: Its inputs; tensors among them are kept (as recipes where they have one).
        part: The :data:`LEAN_PARTS` entry ``fn`` belongs to: recorded only when that part is
            selected (None: whenever lean activations are on).
        recompute: What to run in the backward pass instead of ``fn`` (same values, no side
            effects, e.g. BatchNorm without updating running statistics).
    """
    out = fn(*args)
    registry = getattr(_STATE, "registry", None)
    if registry is None or not (torch.is_grad_enabled() and out.requires_grad):
        return out
    if part is None or lean_enabled(part):
        registry.record(out, recompute or fn, args)
    return out


@contextlib.contextmanager
def lean_activations(enabled: bool | Iterable[str] = True) -> Iterator[None]:
    """Store recipes instead of recorded outputs saved for backward, and use lean dropout.

    Args:
        enabled: The parts to recompute (:func:`lean_parts`: ``True`` for the default ones).

    Re-entrant: an inner call while one is active changes nothing. ``enabled=False`` (or no
    part), calls without autograd (inference) and code that ``torch.compile`` traces are no-ops:
    inductor's partitioner decides itself which outputs to save and recomputes cheap element-wise
    ones, and the saved-tensor hooks would break its graph into pieces.
    """
    parts = lean_parts(enabled)
    if (
        not parts
        or not torch.is_grad_enabled()
        or torch.compiler.is_compiling()
        or getattr(_STATE, "registry", None) is not None
    ):
        yield  # nothing is saved without autograd: inference runs the plain code
        return
    _STATE.registry = _Registry()
    registry = _STATE.registry
    try:
        with lean_mode(parts), torch.autograd.graph.saved_tensors_hooks(registry.pack, _unpack):
            yield
    finally:
        _STATE.registry = None


@contextlib.contextmanager
def _registry_scope(registry: _Registry | None) -> Iterator[None]:
    previous = getattr(_STATE, "registry", None)
    _STATE.registry = registry
    try:
        yield
    finally:
        _STATE.registry = previous


class _Frame:
    """One checkpointed call: its inputs, random and autocast state, and recomputed saves."""

    def __init__(self, fn: Callable[..., Any], args: tuple, lean: frozenset[str]) -> None:
        self.fn, self.lean = fn, lean
        self.args = tuple(
            a.detach().requires_grad_(a.requires_grad) if isinstance(a, Tensor) else a for a in args
        )
        self.devices = sorted({a.device for a in args if isinstance(a, Tensor)}, key=str)
        self.cpu_rng = torch.get_rng_state()
        self.cuda_rng = [torch.cuda.get_rng_state(d) for d in self.devices if d.type == "cuda"]
        self.autocast = [
            (kind, torch.get_autocast_dtype(kind), torch.is_autocast_enabled(kind))
            for kind in sorted({"cpu"} | {d.type for d in self.devices})
        ]
        self.count = 0
        self.saved: list[Any] = []

    def pack(self, t: Tensor) -> tuple[_Frame, int]:
        self.count += 1
        return self, self.count - 1

    def recompute(self) -> None:
        """Run ``fn`` again; its saved tensors are stored lean (recipes) when ``lean``."""
        registry = _Registry() if self.lean else None
        saved: list[Any] = []

        def pack(t: Tensor) -> None:
            saved.append(registry.pack(t) if registry else (t.detach(), t._version))

        cuda = [d for d in self.devices if d.type == "cuda"]
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.random.fork_rng(devices=cuda))
            torch.set_rng_state(self.cpu_rng)
            for device, state in zip(cuda, self.cuda_rng, strict=True):
                torch.cuda.set_rng_state(state, device)
            for kind, dtype, enabled in self.autocast:
                stack.enter_context(torch.autocast(kind, dtype=dtype, enabled=enabled))
            stack.enter_context(torch.enable_grad())
            stack.enter_context(lean_mode(self.lean))
            stack.enter_context(_registry_scope(registry))
            stack.enter_context(torch.autograd.graph.saved_tensors_hooks(pack, _unpack))
            self.fn(*self.args)
        if len(saved) != self.count:
            raise RuntimeError(
                f"Checkpoint recomputation saved {len(saved)} tensors, the forward pass "
                f"{self.count}: the checkpointed function is not deterministic."
            )
        self.saved = saved

    def unpack(self, handle: tuple[_Frame, int]) -> Tensor:
        index = handle[1]
        if not self.saved or self.saved[index] is None:
            self.recompute()  # first use, or used again after retain_graph=True
        packed, self.saved[index] = self.saved[index], None
        return _unpack(packed)


def lean_checkpoint(fn: Callable[..., Any], *args: Any, lean: bool | Iterable[str] = True) -> Any:
    """``fn(*args)`` storing only ``args``; recomputed in the backward pass, lean when ``lean``.

    ``lean``: the parts whose outputs the recomputation stores as recipes (:func:`lean_parts`;
    ``True``: the default ones, False: none).

    Activation checkpointing like ``torch.utils.checkpoint`` (non-reentrant; random state of the
    CPU and of the inputs' CUDA devices and the autocast state restored for the recomputation,
    so it draws the same dropout masks), except that the recomputed saves are stored as in
    :func:`lean_activations`: recorded element-wise outputs as recipes. The recomputation runs
    once, at the first saved tensor the backward pass needs, and each save is released when used.
    """
    if not torch.is_grad_enabled():
        return fn(*args)
    frame = _Frame(fn, args, lean_parts(lean))
    with torch.autograd.graph.saved_tensors_hooks(frame.pack, lambda h: h[0].unpack(h)):
        return fn(*args)


class _MaskedScale(torch.autograd.Function):
    """``x * mask * scale`` with a bool ``mask``; only the mask is saved."""

    @staticmethod
    def forward(ctx, x: Tensor, mask: Tensor, scale: float) -> Tensor:
        ctx.save_for_backward(mask)
        ctx.scale = scale
        out = torch.where(mask, x, 0.0)  # x.mul(mask) would first cast the mask to x's dtype
        return out if scale == 1.0 else out.mul_(scale)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        (mask,) = ctx.saved_tensors
        grad = torch.where(mask, grad, 0.0)
        return (grad if ctx.scale == 1.0 else grad.mul_(ctx.scale)), None, None


def masked_scale(x: Tensor, mask: Tensor, scale: float = 1.0) -> Tensor:
    """``x * mask * scale`` for a bool ``mask`` of ``x``'s shape, saving only the mask."""
    return _MaskedScale.apply(x, mask, scale)


def lean_dropout(dropout: nn.Module, x: Tensor) -> Tensor:
    """``dropout(x)``; in :func:`lean_mode` with a bool mask and the output recomputable.

    Args:
        dropout: An ``nn.Dropout`` (or ``nn.Identity``) module; a ``GapDropout`` keeps its own
            draws (the dropped indices) and its output is recomputed from them.
        x: Input of any shape.

    Returns:
        The same values as ``dropout(x)`` (same random draws).
    """
    p = getattr(dropout, "p", 0.0)
    if not (lean_enabled("dropout") and dropout.training and p > 0):
        return dropout(x)
    if p >= 1:
        return F.dropout(x, p, True)
    uses_gaps = getattr(dropout, "uses_gaps", None)
    if uses_gaps is not None and uses_gaps(x):  # GapDropout: its own draws, dropped indices kept
        dropped, scale = dropout.draw(x)
        return recomputable(dropout.apply_drops, x, dropped, scale, part="dropout")
    keep = 1.0 - p
    mask = torch.empty(x.shape, dtype=torch.bool, device=x.device).bernoulli_(keep)
    # F.dropout scales by 1 / keep rounded to x's dtype; the same factor keeps the values equal.
    scale = torch.tensor(1.0, dtype=x.dtype).div(keep).item()
    return recomputable(masked_scale, x, mask, scale, part="dropout")
