"""Task types. Write a plugin by subclassing ``TaskPlugin``; try it with ``run_local``;
publish it under the entry-point group ``sqlflow_playground.plugins``."""
from .base import (CANCELLED, FAILED, PENDING, RUNNING, SUCCEEDED, UNKNOWN, TaskContext,
                   TaskPlugin, TaskState, is_terminal)
from .local import run_local
from .output import ResponseLog, ResponseWriter, read_lines

__all__ = ["TaskPlugin", "TaskContext", "TaskState", "is_terminal", "run_local", "ResponseLog",
           "ResponseWriter", "read_lines", "PENDING", "RUNNING", "SUCCEEDED", "FAILED",
           "CANCELLED", "UNKNOWN"]
