"""The project's error hierarchy: every failure the platform names, with a retriable flag."""

from __future__ import annotations


class SpotcheckError(Exception):
    """Base of every error spotcheck raises on purpose."""

    retriable: bool = False


class InvalidInput(SpotcheckError):
    """Input that can never be accepted as it is; `field` names the culprit when known."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class UnknownSpec(InvalidInput):
    """A spec id that is not in the catalog."""


class UnknownItem(InvalidInput):
    """A test item code that the spec does not define."""


class Forbidden(SpotcheckError):
    """An authenticated caller asking for something that is not theirs (a foreign task, an item
    outside a lab's accreditation)."""


class NotFound(SpotcheckError):
    """A thing looked up by id that does not exist."""


class TransientError(SpotcheckError):
    """A failure of the broker or the database that may pass if tried again."""

    retriable = True


class StoreError(SpotcheckError):
    """A database failure that retrying will not fix (a constraint, a bad query)."""


def is_retriable(exc: BaseException) -> bool:
    """Whether trying the same thing again may succeed: only errors marked `retriable` (a broker or a
    database that does not answer now). Anything else fails the same way every time."""
    return isinstance(exc, SpotcheckError) and exc.retriable
