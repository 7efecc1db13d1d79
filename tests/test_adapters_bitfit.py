"""BitFit policy: only bias terms (and the named heads) train."""

from __future__ import annotations

import pytest
from torch import nn

from mtlora_vision.adapters.bitfit import is_bitfit_trainable, mark_only_biases_trainable


@pytest.mark.parametrize(
    ("name", "prefixes", "expected"),
    [
        ("backbone.layers.0.blocks.0.attn.qkv.bias", (), True),
        ("backbone.layers.0.blocks.0.norm1.bias", (), True),
        ("bias", (), True),
        ("backbone.layers.0.blocks.0.attn.qkv.weight", (), False),
        ("backbone.layers.0.blocks.0.attn.relative_position_bias_table", (), False),
        ("backbone.layers.0.blocks.0.attn.bias_table", (), False),
        ("heads.semseg.weight", ("heads",), True),
        ("heads_extra.weight", ("heads",), False),
        ("decoder.fuse.weight", ("heads", "decoder"), True),
        ("backbone.heads.weight", ("heads",), False),
    ],
)
def test_bitfit_predicate(name: str, prefixes: tuple[str, ...], expected: bool) -> None:
    assert is_bitfit_trainable(name, prefixes) is expected


def test_mark_only_biases_trainable_counts() -> None:
    model = nn.ModuleDict(
        {
            "backbone": nn.Sequential(
                nn.Linear(4, 3), nn.LayerNorm(3), nn.Linear(3, 3, bias=False)
            ),
            "heads": nn.Linear(3, 2),
        }
    )
    count = mark_only_biases_trainable(model, trainable_prefixes=("heads",))
    # Linear(4,3) bias 3 + LayerNorm bias 3 + head weight 6 and bias 2.
    assert count == 3 + 3 + 3 * 2 + 2
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == [
        "backbone.0.bias",
        "backbone.1.bias",
        "heads.bias",
        "heads.weight",
    ]
    assert mark_only_biases_trainable(model) == 3 + 3 + 2
