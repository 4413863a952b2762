"""The one error type for mistakes a user can cause.

Raise :class:`CmatError` for bad flag values, missing data, corrupt or foreign stores, a resume
that does not match its configuration, ... The CLI catches it at its boundary and prints the
message as one line on stderr with a non-zero exit. Anything else is a bug and keeps its
traceback.
"""


class CmatError(Exception):
    """A user-caused error; ``str(err)`` is the single line shown to the user."""
