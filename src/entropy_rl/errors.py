"""The errors a user can fix, apart from our bugs.

The CLI prints a :class:`UserError` as one line (what was wrong and how to fix it) and exits 2;
any other exception is a bug in entropy-rl or a library and keeps its traceback. Raise a
``UserError`` only where the cause is the user's input or machine (config, data, reward, paths,
disk), never to wrap an exception whose cause is unknown.
"""

from __future__ import annotations

__all__ = ["ConfigError", "MissingExtraError", "UserError"]


class UserError(Exception):
    """A mistake in the user's input or environment: the message says what and how to fix it."""


class ConfigError(UserError, ValueError):
    """A config that cannot run: the message names the key and what is allowed."""


class MissingExtraError(UserError, ImportError):
    """An optional dependency is not installed: the message names the extra to install
    (``pip install 'entropy-rl[EXTRA]'``)."""
