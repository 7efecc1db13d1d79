# BitFit (Ben Zaken et al., ACL 2022): no adapter; of the backbone only the bias terms train
# (linear and conv biases and LayerNorm shifts; not the rel-pos tables), plus fusion and heads.
method_name = "bitfit"
method_adapter = None
# Switches that differ from TrainablePolicy's defaults (the decoder trains by default).
method_trainable = dict(
    adapters=False, patch_embed=False, norms=False, rel_pos=False, downsample=False, biases=True
)
