"""The tasks: one module per task owning its whole vertical (prompts, request checks, training
targets, post-processing, evaluation samples), and the table that lists them
(:mod:`xsam.tasks.registry`). See ``docs/adding-a-task.md``."""

from .task import Task

__all__ = ["Task"]
