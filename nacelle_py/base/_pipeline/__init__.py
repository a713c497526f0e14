"""The pipeline engine: ``Pipeline`` (a Process) over a tree of ``Stage`` objects."""

from ._message import Message
from ._pipeline import ENGINES, Pipeline, PipelineError, PipelineSettings, StageStats
from ._stage import Stage

__all__ = ["ENGINES", "Message", "Pipeline", "PipelineError", "PipelineSettings", "Stage", "StageStats"]
