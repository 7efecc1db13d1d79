# Full fine-tuning: no adapter, every backbone parameter and the decoder train (the paper's
# "MTL full FT" row; with one task, its "single-task full FT" baseline).
method_name = "full-ft"
method_adapter = None
method_trainable = dict(
    adapters=False,
    patch_embed=True,
    norms=True,
    rel_pos=True,
    downsample=True,
    backbone=True,
    decoder=True,
    biases=True,
)
