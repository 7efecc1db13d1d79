"""Validate once before training starts (the official recipe also evaluates at epoch 0)."""

from __future__ import annotations

from mmengine.hooks import Hook


class ValidateBeforeTrainHook(Hook):
    """Run the validation loop once before training starts, so logs show the untrained baseline.

    Skipped when training resumes from a checkpoint (the run then does not start at iteration 0).
    """

    priority = "LOW"

    def before_train(self, runner) -> None:
        """Run ``runner.val_loop`` when starting from iteration 0 and a validation loop exists."""
        if runner.iter == 0 and runner.val_loop is not None:
            runner.logger.info("Validating the untrained model (ValidateBeforeTrainHook).")
            runner.val_loop.run()
