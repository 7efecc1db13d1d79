"""BitFit predicate: only bias terms train."""

from __future__ import annotations

import pytest

from mtlora_vision.models.backbones.swin_trainable import is_bitfit_trainable


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("backbone.layers.0.blocks.0.attn.qkv.bias", True),
        ("backbone.layers.0.blocks.0.norm1.bias", True),
        ("bias", True),
        ("backbone.layers.0.blocks.0.attn.qkv.weight", False),
        ("backbone.layers.0.blocks.0.attn.relative_position_bias_table", False),
        ("backbone.layers.0.blocks.0.attn.bias_table", False),
        ("heads.semseg.weight", False),
    ],
)
def test_bitfit_predicate(name: str, expected: bool) -> None:
    assert is_bitfit_trainable(name) is expected
