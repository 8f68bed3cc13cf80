"""Evaluation: metrics (one module per family) and, later, the benchmark runner."""
