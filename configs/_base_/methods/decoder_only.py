# Decoder-only: no adapter, the whole backbone frozen (patch embedding, norms, rel-pos tables and
# patch-merging reductions included); only the per-task fusion and heads train.
method_name = "decoder-only"
method_adapter = None
# Switches that differ from TrainablePolicy's defaults (the decoder trains by default).
method_trainable = dict(
    adapters=False, patch_embed=False, norms=False, rel_pos=False, downsample=False
)
