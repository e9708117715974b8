"""The one error type of the downstream package."""


class DownstreamError(ValueError):
    """A user mistake (missing run files, unknown task or metric, malformed data); the message is one line."""
