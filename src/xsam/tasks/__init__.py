"""Task-level code outside the network: prompt formatting, targets and post-processing."""

from .task import TASKS, Task, TaskSpec

__all__ = ["TASKS", "Task", "TaskSpec"]
