"""The one exception type that means "the user's input is wrong".

The CLI turns it into a single line on stderr and exit status 2; everything else is a bug and keeps
its traceback.
"""


class UserInputError(Exception):
    """Bad config value, missing file, or a shape / class-count mismatch the user can fix."""
