"""LambdaListener: an app as an AWS Lambda function (a custom runtime speaking the Runtime API over httpx).

``_context`` (LambdaContext, the function's environment) and ``_settings``
(LambdaSettings) import nothing of the others; ``_errors`` builds the error
bodies; ``_runtime`` is the Runtime API client; ``_listener`` composes them.
"""

from ._context import LambdaContext
from ._listener import LambdaListener, LambdaStats
from ._runtime import RuntimeAPIError
from ._settings import LambdaSettings

__all__ = ["LambdaContext", "LambdaListener", "LambdaSettings", "LambdaStats", "RuntimeAPIError"]
