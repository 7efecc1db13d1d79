"""LoRA linear layer (Hu et al., LoRA: Low-Rank Adaptation of Large Language Models, ICLR 2022).

A plain LoRA layer is an :class:`~mtlora_vision.adapters.mtlora.MTLoRALinear` without task
adapters: ``y = W x + b + s B A Dropout(x)``, with ``A`` Kaiming-uniform and ``B`` zero. As in the
MTLoRA code, the scale ``s`` is used as given; pass ``alpha / rank`` for the usual LoRA scaling.
"""

from __future__ import annotations

from torch import nn

from mtlora_vision.adapters.mtlora import MTLoRALinear


class LoRALinear(MTLoRALinear):
    """Frozen ``nn.Linear`` plus one low-rank update.

    Args:
        base_layer: Pretrained layer to wrap; its parameters are frozen here.
        rank: Rank of the update.
        scale: Factor on the update.
        dropout: Dropout probability on the input of the low-rank branch.
        trainable_scale: Store the scale as a trainable parameter.
    """

    def __init__(
        self,
        base_layer: nn.Linear,
        rank: int,
        scale: float = 1.0,
        dropout: float = 0.0,
        trainable_scale: bool = False,
    ) -> None:
        super().__init__(
            base_layer,
            shared_rank=rank,
            shared_scale=scale,
            dropout=dropout,
            trainable_scale=trainable_scale,
        )
