"""Metric families: each module accumulates per-sample statistics and computes the final numbers."""
