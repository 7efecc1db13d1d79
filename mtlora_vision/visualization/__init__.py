"""Colourised pictures of multi-task inputs, targets and predictions."""
