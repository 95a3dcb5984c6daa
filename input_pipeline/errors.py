"""Errors of the input pipelines that a user fixes in the config or on disk (binaries print them without a
traceback)."""


class DataConfigError(ValueError):
  """The data config asks for data that cannot be used; the message names the field or the folder."""
