"""User-facing errors.

An InputError is the user's to fix (a bad file, a bad box, a bad option). The command
line prints its message as one line and exits with code 2, without a traceback.
Anything else is a bug and keeps its traceback.
"""

EXIT_INPUT = 2


class InputError(Exception):
    """Unusable input: the message names the input, the problem and what to do."""


class ParityError(InputError):
    """An exported model disagrees with the PyTorch reference beyond tolerance."""
