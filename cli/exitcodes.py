"""Exit codes of every `service-registry` command, and the exception that ends a command with one.

0 success, 1 not found, 2 usage (also when the server rejects an argument), 3 server unavailable
(cannot connect, UNAVAILABLE, DEADLINE_EXCEEDED), 4 other errors (including a declined
confirmation), 130 interrupted.
"""
from __future__ import annotations

EXIT_OK, EXIT_NOT_FOUND, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_ERROR = 0, 1, 2, 3, 4
EXIT_INTERRUPTED = 130


class Failure(Exception):
    """Ends a command with one line on stderr and exit code `code`."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def one_line(text: str) -> str:
    return " ".join(str(text).split())
