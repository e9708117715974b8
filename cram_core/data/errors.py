"""The one exception type of the data pipeline."""

from cram_core.config import ConfigError


class DataError(ConfigError):
    """Bad data input (a source, file, field or corpus); the message is one line naming the culprit."""
