"""User-facing errors: one clear line for the user, exit code 2, no traceback."""

from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

EXIT_USER_ERROR = 2

F = TypeVar("F", bound=Callable[..., int | None])


class UserError(Exception):
    """An error caused by input the user can fix (bad path, name, value); the message says what to fix."""


class DataError(UserError):
    """A data file or data root is missing, unreadable or malformed; the message names the file."""


class ConfigError(UserError):
    """A configuration value, key or file is invalid; the message names the key or file and the valid choices."""


def exits_cleanly_on_user_error(main: F) -> F:
    """Wrap an entry point so a UserError prints `error: <message>` to stderr and exits 2 (no traceback)."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)

    return wrapper  # type: ignore[return-value]
