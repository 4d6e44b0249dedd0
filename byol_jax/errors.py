"""The one exception type that the entry points turn into a one-line message.

Library code raises :class:`UserError` for problems the user can fix (a wrong config value, a
missing dataset, an empty image folder, a checkpoint of another architecture). The message names
the problem and the fix on one line; ``byol_jax.main`` prints it and exits non-zero without a
traceback. Programming errors keep their normal exceptions and tracebacks.
"""


class UserError(Exception):
  """A problem in the user's input, reported as one line naming the problem and the fix."""
