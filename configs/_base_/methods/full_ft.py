# Full fine-tuning: no adapter, every backbone parameter and the decoder train (the paper's
# "MTL full FT" row; with one task, its "single-task full FT" baseline).
method_name = "full-ft"
method_adapter = None
# Switches that differ from TrainablePolicy's defaults (all other groups train by default).
method_trainable = dict(adapters=False, backbone=True, biases=True)
