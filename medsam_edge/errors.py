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


# OpenVINO's messages open with lines of source locations and end in the one that says
# what went wrong.
_LOCATION_LINES = ("Exception from", "Check ")


def first_line(e: BaseException, limit: int = 200) -> str:
    """A library's exception as one line for an InputError: its first line, or after
    OpenVINO's source-location lines the last one (the one that says what went wrong);
    the exception's type where it says nothing."""
    message = e.message() if callable(getattr(e, "message", None)) else str(e)  # tritonclient's errors
    lines = [ln.strip() for ln in str(message or e).splitlines() if ln.strip()]
    said = [ln for ln in lines if not ln.startswith(_LOCATION_LINES)]
    if not said:
        return type(e).__name__[:limit]
    return (said[-1] if len(said) < len(lines) else said[0])[:limit]
