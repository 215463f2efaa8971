"""The one exception type a user of the data pipeline can cause."""


class DataError(ValueError):
  """A data config, file or corpus problem; the message names it and the fix."""
