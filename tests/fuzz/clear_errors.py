"""The contract every fuzz test checks: success, or a chtorch error a user can read."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# ValueError covers OptionError and ConfigError (both subclass it); RuntimeError is what the engine
# raises for a call out of order (step after remove).
CLEAR_ERRORS: tuple[type[BaseException], ...] = (ValueError,)


def success_or_clear_error(call: Callable[[], Any], errors: tuple[type[BaseException], ...] = CLEAR_ERRORS) -> Any:
    """Run ``call``; a chtorch error must be of ``errors`` and carry a one-line, non-empty message.
    Any other exception (TypeError, KeyError, AttributeError, IndexError...) propagates and fails
    the test."""
    try:
        return call()
    except errors as exc:
        message = str(exc)
        assert message and "\n" not in message, f"not a one-line message: {message!r}"
        assert "Traceback" not in message
        return exc
