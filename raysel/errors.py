"""User-facing errors: one clear line for the user, exit code 2, no traceback."""

from __future__ import annotations

import difflib
import functools
import sys
from typing import Any, Callable, Iterable, TypeVar

__all__ = [
    "EXIT_USER_ERROR", "UserError", "DataError", "ConfigError", "unknown_name_error", "exits_cleanly_on_user_error",
]

EXIT_USER_ERROR = 2

F = TypeVar("F", bound=Callable[..., int | None])


class UserError(Exception):
    """An error caused by input the user can fix (bad path, name, value); the message says what to fix."""


class DataError(UserError):
    """A data file or data root is missing, unreadable or malformed; the message names the file."""


class ConfigError(UserError):
    """A configuration value, key or file is invalid; the message names the key or file and the valid choices."""


def unknown_name_error(what: str, name: Any, choices: Iterable[str], listing: str = "valid choices") -> ConfigError:
    """ConfigError for a name not among ``choices``, suggesting near misses (difflib) so a typo is fixed at a glance:
    ``unknown method 'hiats'; did you mean 'hiast'? (registered methods: ...)``."""
    choices = [str(choice) for choice in choices]
    close = difflib.get_close_matches(name, choices, n=3) if isinstance(name, str) else []
    if not close and isinstance(name, str):  # case-only typos ('HIAST') score low on the raw strings
        folded = {choice.lower(): choice for choice in choices}
        close = [folded[match] for match in difflib.get_close_matches(name.lower(), list(folded), n=3)]
    if close:
        suggestion = " or ".join(repr(choice) for choice in close)
        return ConfigError(f"unknown {what} {name!r}; did you mean {suggestion}? ({listing}: {', '.join(choices)})")
    return ConfigError(f"unknown {what} {name!r}; {listing}: {', '.join(choices)}")


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
