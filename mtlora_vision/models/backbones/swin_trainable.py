"""Which parameters of the Swin backbone train: a pure policy over names, one switch per group.

MTLoRA (Agiza et al., CVPR 2024) trains the adapters, the patch embedding, every norm, the
relative-position tables and (plain MTLoRA only) the patch-merging reductions, and freezes every
other pretrained weight and bias of the backbone (``docs/model.md#trainable-policy``). Here each
backbone parameter falls into exactly one group, decided in this order:

1. ``adapters``: parameters of adapter layers (found structurally, see
   :func:`~mtlora_vision.adapters.state_dict.adapter_parameter_names`);
2. ``backbone``: the pretrained weights wrapped by adapter layers (always frozen by the paper);
3. the backbone's named groups, first match wins (for Swin: ``patch_embed``, ``rel_pos``,
   ``downsample``, ``norms``), each given as a substring of the parameter name;
4. ``backbone``: everything else.

Orthogonal to the groups, the ``biases`` switch (BitFit, Ben Zaken et al., ACL 2022) also trains
every backbone bias term (a parameter whose own name is ``bias``, see :func:`is_bitfit_trainable`)
whatever its group. The group names returned here are :class:`ParameterGroup` strings that remember
whether the parameter is a bias, so ``policy.is_trainable(group)`` can apply that switch without
seeing the parameter name.

The decoder side (fusion and heads) is one more switch, ``decoder``, applied by the model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

from torch import nn

from mtlora_vision.adapters.state_dict import adapter_parameter_names, base_layer_parameter_names

ADAPTERS = "adapters"
BACKBONE = "backbone"

#: Swin's named parameter groups, ``(group, substring)``, first match wins.
PARAM_GROUPS: tuple[tuple[str, str], ...] = (
    ("patch_embed", "patch_embed."),
    ("rel_pos", "relative_position_bias_table"),
    ("downsample", "downsample.reduction."),
    ("norms", "norm"),
)


def is_bitfit_trainable(name: str) -> bool:
    """Whether parameter ``name`` is a bias term that BitFit trains.

    BitFit (Ben Zaken, Ravfogel and Goldberg, ACL 2022) trains the bias terms of a pretrained
    backbone: every parameter whose own name is ``bias`` (linear and convolution biases, LayerNorm
    shifts). Swin's ``relative_position_bias_table`` is not a bias term. MTLoRA's BitFit setting is
    not published (MTLoRA issue #8).

    Args:
        name: Dotted parameter name, e.g. ``"backbone.layers.0.blocks.0.attn.qkv.bias"``.
    """
    return name.rsplit(".", 1)[-1] == "bias"


class ParameterGroup(str):
    """A group name (compares and hashes like the plain string) that knows if it holds a bias.

    Args:
        group: Group name, e.g. ``"norms"``.
        is_bias: Whether the parameter is a bias term (BitFit's definition).
    """

    is_bias: bool

    def __new__(cls, group: str, is_bias: bool = False) -> ParameterGroup:  # noqa: D102
        obj = super().__new__(cls, group)
        obj.is_bias = is_bias
        return obj

    def __reduce__(self) -> tuple:
        return (ParameterGroup, (str(self), self.is_bias))


@dataclass(frozen=True)
class TrainablePolicy:
    """Trainability switch per parameter group; defaults are the MTLoRA paper's.

    Attributes:
        adapters: Adapter parameters.
        patch_embed: Patch embedding (conv and norm).
        norms: Every other norm of the backbone (block and patch-merging norms).
        rel_pos: Relative-position bias tables.
        downsample: Patch-merging reductions that are not wrapped by an adapter.
        backbone: Every other backbone parameter, including weights wrapped by adapters.
        decoder: Fusion and heads.
        biases: Also train every bias term, whatever its group (BitFit).
    """

    adapters: bool = True
    patch_embed: bool = True
    norms: bool = True
    rel_pos: bool = True
    downsample: bool = True
    backbone: bool = False
    decoder: bool = True
    biases: bool = False

    def __post_init__(self) -> None:
        bad = {k: v for k, v in asdict(self).items() if not isinstance(v, bool)}
        if bad:
            raise ValueError(f"Trainable switches must be True or False, got {bad}.")

    @classmethod
    def from_mapping(cls, switches: Mapping[str, bool] | None) -> TrainablePolicy:
        """Build from a config mapping; unknown keys are an error naming the allowed ones."""
        switches = dict(switches or {})
        allowed = set(asdict(cls()))
        unknown = sorted(set(switches) - allowed)
        if unknown:
            raise KeyError(f"Unknown trainable switches {unknown}; allowed: {sorted(allowed)}.")
        return cls(**switches)

    def is_trainable(self, group: str) -> bool:
        """Switch of ``group``; also True for a bias (:class:`ParameterGroup`) under ``biases``."""
        switches = asdict(self)
        if group not in switches or group == "biases":
            groups = sorted(set(switches) - {"biases"})
            raise KeyError(f"Unknown parameter group {str(group)!r}; groups: {groups}.")
        return switches[group] or (self.biases and getattr(group, "is_bias", False))


def parameter_group(
    name: str,
    patterns: Sequence[tuple[str, str]],
    adapter_names: frozenset[str] | set[str],
    base_names: frozenset[str] | set[str],
) -> str:
    """Return the group of one parameter name (pure; order of rules in the module docstring).

    Args:
        name: Parameter name.
        patterns: ``(group, substring)`` rules, first match wins.
        adapter_names: Names of adapter parameters.
        base_names: Names of the pretrained parameters wrapped by adapter layers.

    Returns:
        The group name, a :class:`ParameterGroup` that records whether ``name`` is a bias term.
    """
    is_bias = name not in adapter_names and is_bitfit_trainable(name)
    if name in adapter_names:
        return ParameterGroup(ADAPTERS)
    if name in base_names:
        return ParameterGroup(BACKBONE, is_bias)
    for group, substring in patterns:
        if substring in name:
            return ParameterGroup(group, is_bias)
    return ParameterGroup(BACKBONE, is_bias)


def parameter_groups(
    names: Iterable[str],
    patterns: Sequence[tuple[str, str]],
    adapter_names: Iterable[str] = (),
    base_names: Iterable[str] = (),
) -> dict[str, str]:
    """Map every parameter name to its group (see :func:`parameter_group`)."""
    adapters, bases = frozenset(adapter_names), frozenset(base_names)
    return {n: parameter_group(n, patterns, adapters, bases) for n in names}


def module_parameter_groups(
    module: nn.Module, patterns: Sequence[tuple[str, str]]
) -> dict[str, str]:
    """Map every parameter of a backbone to its group (adapter layers found structurally).

    Args:
        module: The backbone (parameter names are relative to it).
        patterns: The backbone's ``(group, substring)`` rules.

    Returns:
        Parameter name -> group.
    """
    return parameter_groups(
        (n for n, _ in module.named_parameters()),
        patterns,
        adapter_parameter_names(module),
        base_layer_parameter_names(module),
    )


def apply_trainable_policy(
    module: nn.Module, policy: TrainablePolicy, patterns: Sequence[tuple[str, str]]
) -> dict[str, str]:
    """Set ``requires_grad`` of every parameter of a backbone from its group's switch.

    Args:
        module: The backbone (parameter names are relative to it).
        policy: Switches.
        patterns: The backbone's ``(group, substring)`` rules.

    Returns:
        Parameter name -> group.
    """
    groups = module_parameter_groups(module, patterns)
    for name, param in module.named_parameters():
        param.requires_grad_(policy.is_trainable(groups[name]))
    return groups
