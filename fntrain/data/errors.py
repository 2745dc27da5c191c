"""The single exception type for bad data input."""


class DataError(ValueError):
    """Raised when user-supplied data or data options are invalid.

    Messages say what was wrong, what was expected and, when there is one,
    the file path involved.
    """
