"""Timing, FLOPs and peak memory of model variants, side by side (``tools/benchmark.py``).

* :mod:`.variants`: the variants of a config (``model``, ``frozen``, ``no_adapter``,
  ``checkpointed``; add more with :func:`register_variant`) and how they are built.
* :mod:`.steps`: a training step, inference and merged inference, their FLOPs and compiled twins.
* :mod:`.timing`: the variants timed in interleaved rounds; medians, ratios, the FLOP floor.
* :mod:`.memory`: peak RSS of a variant and phase in a forked child.
* :mod:`.run`: all of it for every variant, phase and precision (:func:`run`).
"""

from mtlora_vision.benchmarking.memory import measure_memory
from mtlora_vision.benchmarking.run import run
from mtlora_vision.benchmarking.variants import (
    VARIANTS,
    VariantSpec,
    build_variant,
    count_trainable,
    load_cfg,
    register_variant,
    variant_specs,
)

__all__ = [
    "VARIANTS",
    "VariantSpec",
    "build_variant",
    "count_trainable",
    "load_cfg",
    "measure_memory",
    "register_variant",
    "run",
    "variant_specs",
]
