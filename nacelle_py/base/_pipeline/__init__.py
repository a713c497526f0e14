"""The pipeline engine: ``Pipeline`` (a Process) over a tree of ``Stage`` objects."""

from ._pipeline import ENGINES, Pipeline, PipelineError, PipelineSettings, StageStats
from ._stage import Stage

__all__ = ["ENGINES", "Pipeline", "PipelineError", "PipelineSettings", "Stage", "StageStats"]
