"""Inference: the per-image caching predictor and overlays. The predictor dispatches every task
through the task table and has no task logic of its own."""
