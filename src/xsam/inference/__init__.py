"""Inference: the per-image caching predictor and visualisation. No task logic of its own."""
