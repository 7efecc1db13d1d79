"""The numeric precision of a run: ``--precision {auto,fp32,bf16,fp16}`` (``--amp``: mixed).

``auto`` picks the fastest precision the hardware runs natively:

* CUDA: fp16 autocast with dynamic loss scaling (the official MTLoRA recipe);
* a CPU with native bf16 instructions (``amx_bf16`` or ``avx512_bf16`` in ``/proc/cpuinfo``):
  bf16 autocast (no loss scaling needed; 2.3x faster training than fp32 on an AMD EPYC with
  ``avx512_bf16``, see the README);
* any other CPU: fp32 (bf16 there is emulated and slower than fp32).

Training, validation and testing all run in the chosen precision: the optimizer wrapper is
switched (:class:`~mmengine.optim.AmpOptimWrapper` on CUDA,
:class:`~mtlora_vision.engine.amp.CPUAutocastOptimWrapper` on the CPU, plain
:class:`~mmengine.optim.OptimWrapper` for fp32) and mmengine's ``ValLoop``/``TestLoop`` get
``fp16=True`` (their autocast, bf16 on the CPU). ``MTLORA_PRECISION`` in the environment sets the
default (the test suite pins ``fp32`` with it).

This module imports neither torch nor mmengine at import time, so tools can add the flag before
their heavy imports.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mtlora_vision.errors import ConfigError

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: Environment variable giving the default of ``--precision``.
PRECISION_ENV = "MTLORA_PRECISION"
#: ``/proc/cpuinfo`` flags of native bf16 arithmetic (AMX tiles, AVX-512 BF16 dot products).
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
_WRAPPERS = ("OptimWrapper", "AmpOptimWrapper", "CPUAutocastOptimWrapper")
_LOOPS = ("ValLoop", "TestLoop")


@dataclass(frozen=True)
class Precision:
    """A resolved precision.

    Attributes:
        mode: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (the autocast dtype of the mixed modes).
        device: ``"cuda"`` or ``"cpu"``.
        reason: Why this mode, e.g. ``"auto: CPU with native bf16: amx_bf16, avx512_bf16"``.
    """

    mode: str
    device: str
    reason: str

    @property
    def mixed(self) -> bool:
        """Whether the forward pass runs under autocast."""
        return self.mode != "fp32"

    def describe(self) -> str:
        """One line for logs and the start-up summary."""
        what = "fp32" if not self.mixed else f"{self.mode} autocast on {self.device}"
        if self.mode == "fp16":
            what += " with dynamic loss scaling"
        return f"{what} ({self.reason})"


def cpu_bf16_flags(cpuinfo: str = "/proc/cpuinfo") -> tuple[str, ...]:
    """The native-bf16 flags (:data:`NATIVE_BF16_FLAGS`) this CPU reports; empty when none.

    Reads the first ``flags`` line of ``cpuinfo`` (Linux). Where the file does not exist (other
    systems) nothing is detected and ``auto`` stays fp32; ``--precision bf16`` still works.
    """
    if not os.path.isfile(cpuinfo):
        return ()
    with open(cpuinfo, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if line.startswith("flags"):
                flags = set(line.partition(":")[2].split())
                return tuple(f for f in NATIVE_BF16_FLAGS if f in flags)
    return ()


def choose_precision(
    requested: str, cuda: bool, cpu_flags: Sequence[str], cuda_bf16: bool = True
) -> Precision:
    """Resolve ``--precision`` for the hardware at hand (pure function).

    Args:
        requested: One of :data:`PRECISIONS`, or ``"amp"`` (``--amp``: fp16 on CUDA, bf16 on
            the CPU).
        cuda: Whether the run uses a CUDA device.
        cpu_flags: The CPU's native-bf16 flags (:func:`cpu_bf16_flags`).
        cuda_bf16: Whether the CUDA device supports bf16 (``torch.cuda.is_bf16_supported()``).

    Returns:
        The precision to run in.

    Raises:
        ValueError: For an unknown name, fp16 without CUDA, or bf16 on a GPU without it.
    """
    device = "cuda" if cuda else "cpu"
    if requested not in (*PRECISIONS, "amp"):
        raise ConfigError(
            f"Unknown precision {requested!r} (--precision or ${PRECISION_ENV}); choose one of "
            f"{', '.join(PRECISIONS)}."
        )
    if requested == "amp":
        return Precision("fp16" if cuda else "bf16", device, "--amp: the hardware's mixed mode")
    if requested == "auto":
        if cuda:
            return Precision("fp16", device, "auto: CUDA, the official recipe")
        if cpu_flags:
            return Precision("bf16", device, f"auto: CPU with native bf16: {', '.join(cpu_flags)}")
        flags = ", ".join(NATIVE_BF16_FLAGS)
        return Precision("fp32", device, f"auto: CPU without native bf16 (none of {flags})")
    if requested == "fp16" and not cuda:
        raise ConfigError(
            "--precision fp16 needs CUDA (fp16 autocast with loss scaling); on the CPU use bf16 "
            "(fast where the CPU has native bf16) or fp32."
        )
    if requested == "bf16" and cuda and not cuda_bf16:
        raise ConfigError("--precision bf16: this GPU has no bf16 support; use fp16 or fp32.")
    reason = "asked"
    if requested == "bf16" and not cuda and not cpu_flags:
        reason = "asked; this CPU has no native bf16, so bf16 is emulated and likely slower"
    return Precision(requested, device, reason)


def autocast(precision: Precision) -> contextlib.AbstractContextManager:
    """``torch.autocast`` of a mixed ``precision`` on its device; a null context for fp32."""
    import torch

    if not precision.mixed:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision.mode == "bf16" else torch.float16
    return torch.autocast(precision.device, dtype=dtype)


def detect_precision(requested: str) -> Precision:
    """:func:`choose_precision` for this machine (CUDA and CPU flags detected)."""
    import torch

    cuda = torch.cuda.is_available()
    cuda_bf16 = cuda and torch.cuda.is_bf16_supported()
    return choose_precision(requested, cuda, cpu_bf16_flags(), cuda_bf16=cuda_bf16)


def _dotted(cls: type) -> str:
    """A class as a dotted path (a class object in a loaded config breaks its ``pretty_text``)."""
    return f"{cls.__module__}.{cls.__qualname__}"


def _apply_to_wrapper(wrapper: Any, precision: Precision) -> None:
    """Switch an ``optim_wrapper`` config to ``precision`` (in place)."""
    from mmengine.optim import AmpOptimWrapper, OptimWrapper

    from mtlora_vision.engine.amp import CPUAutocastOptimWrapper
    from mtlora_vision.engine.runtime import _type_name

    kind = _type_name(wrapper.get("type", "OptimWrapper"))
    if kind not in _WRAPPERS:
        if precision.mixed:
            raise ConfigError(
                f"optim_wrapper.type={kind!r}: --precision {precision.mode} can only switch "
                f"{', '.join(_WRAPPERS)}; use --precision fp32 or one of those wrappers."
            )
        return
    amp = precision.mixed and precision.device == "cuda"  # AmpOptimWrapper
    for key in ("dtype", "loss_scale") if amp else ("dtype", "loss_scale", "use_fsdp"):
        wrapper.pop(key, None)
    if not precision.mixed:
        wrapper.type = _dotted(OptimWrapper)
    elif not amp:
        wrapper.type = _dotted(CPUAutocastOptimWrapper)
    else:
        wrapper.type = _dotted(AmpOptimWrapper)
        wrapper.dtype = {"fp16": "float16", "bf16": "bfloat16"}[precision.mode]
        if precision.mode == "fp16":
            wrapper.loss_scale = "dynamic"


def _apply_to_loop(key: str, loop: Any, precision: Precision) -> None:
    """Set ``fp16`` (mmengine's autocast switch) of a ``val_cfg``/``test_cfg`` (in place)."""
    from mtlora_vision.engine.runtime import _type_name

    kind = _type_name(loop.get("type", "ValLoop" if key == "val_cfg" else "TestLoop"))
    if kind in _LOOPS:
        loop.fp16 = precision.mixed
    elif precision.mixed:
        raise ConfigError(
            f"{key}.type={kind!r}: --precision {precision.mode} sets fp16 on mmengine's "
            f"{' and '.join(_LOOPS)} only; use --precision fp32 or one of those loops."
        )


def apply_precision(cfg: Any, precision: Precision) -> None:
    """Make ``cfg`` (an mmengine ``Config``) train, validate and test in ``precision`` (in place).

    Sets ``optim_wrapper.type`` (dotted path, so the config still prints and dumps), its
    ``dtype``/``loss_scale``, ``fp16`` of ``val_cfg``/``test_cfg`` (mmengine's autocast: bf16 on
    the CPU, the CUDA autocast dtype on a GPU, set to bf16 process-wide for ``bf16``), and
    ``cfg.precision`` to :meth:`Precision.describe` (recorded in the run's config dump).

    Raises:
        ValueError: If the config's optimizer wrapper or loop is a custom type that
            ``precision`` cannot be applied to (named with the key to change).
    """
    if cfg.get("optim_wrapper") is not None:
        _apply_to_wrapper(cfg.optim_wrapper, precision)
    for key in ("val_cfg", "test_cfg"):
        if cfg.get(key):
            _apply_to_loop(key, cfg[key], precision)
    if precision.device == "cuda" and precision.mode == "bf16":
        import torch

        torch.set_autocast_dtype("cuda", torch.bfloat16)  # mmengine's loops use the default
    cfg.precision = precision.describe()
    logger.info("Precision: %s.", cfg.precision)


def add_precision_argument(parser: argparse.ArgumentParser, several: bool = False) -> None:
    """Add ``--precision`` (default ``$MTLORA_PRECISION`` or ``auto``) and its alias ``--amp``.

    With ``several``, ``--precision`` takes one or more values (``tools/benchmark.py`` times them
    side by side; ``args.precision`` is then a list or None).
    """
    what = "one or more precisions, timed side by side (e.g. fp32 bf16)" if several else "precision"
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        nargs="+" if several else None,
        default=None,
        help=f"{what}; auto (default, or $MTLORA_PRECISION): fp16 autocast with loss scaling on "
        "CUDA, bf16 autocast on CPUs with native bf16 (avx512_bf16 or AMX), fp32 elsewhere",
    )
    parser.add_argument(
        "--amp",
        dest="precision",
        action="store_const",
        const=["amp"] if several else "amp",
        help="alias of the hardware's mixed precision (fp16 on CUDA, bf16 on the CPU)",
    )


def default_precision() -> str:
    """The precision used when none is given: ``$MTLORA_PRECISION``, else ``auto``."""
    return os.environ.get(PRECISION_ENV) or "auto"


def requested_precision(args: argparse.Namespace) -> str:
    """The precision asked for: ``--precision`` (or ``--amp``), else :func:`default_precision`."""
    return args.precision or default_precision()
