"""The project's error base class and the input pipelines' typed errors.

Every error a user fixes (a config field, a folder, a file, a checkpoint) derives from ProjectError; the binaries
(launch/cli.py) print its message without a traceback and exit with status 1. It lives here, at the bottom of the
dependency graph, so that input_pipeline and launch both raise it.
"""


class ProjectError(Exception):
  """A user's mistake or a bad input; the message names the file or field and the fix."""


class ConfigError(ProjectError, ValueError):
  """A config field or flag value that cannot be used; the message names the field."""


class ConfigArgumentError(ProjectError):
  """A config file's get_config() refuses its argument (e.g. an unknown variant in cfi.py:VARIANTS).

  Not a ValueError on purpose: ml_collections' config flag folds a ValueError or TypeError raised while parsing into
  the flag error's text, traceback included; this one reaches the binary's error policy (launch/cli.py) instead.
  """


class DataConfigError(ConfigError):
  """The data config asks for data that cannot be used; the message names the field or the folder."""
