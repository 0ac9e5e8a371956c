"""The one exception hierarchy of the pacing service.

Callers and retry policies catch a class, not a list::

    PacingError
    ├── ConfigurationError            settings are invalid or unsafe; start-up stops
    ├── TransientError                may succeed on the next try
    │   ├── StatServerUnavailable     neither Stat Server answered usably
    │   ├── EngagementUnavailable     connect error, timeout or 5xx from the engagement platform
    │   └── HistoryUnavailable        the history database did not take the write
    └── PermanentError                retrying the same request cannot help
        ├── InvalidResponse           a body that does not follow the documented contract
        ├── EngagementRejected        a 4xx other than the two below (auth, validation, size)
        ├── DeltaBaseMismatch         409: receiver lacks ``base_seq``; send a full snapshot
        └── StaleSequence             409: the receiver already has this ``seq`` or a newer one
"""

from __future__ import annotations


class PacingError(Exception):
    """Base class of every error the pacing service raises on purpose."""


class ConfigurationError(PacingError):
    """A setting is invalid, contradictory or unsafe; the message names it and the fix."""


class TransientError(PacingError):
    """The operation may succeed if tried again later."""


class StatServerUnavailable(TransientError):
    """Neither the primary nor the backup Stat Server gateway gave a usable answer."""


class EngagementUnavailable(TransientError):
    """The engagement platform could not be reached, timed out or answered 5xx."""


class HistoryUnavailable(TransientError):
    """The history database is down or refused the write."""


class ShardTargetsMissing(TransientError):
    """A shard task's target rows are no longer in Redis; its cycle is lost, the next one
    parks them again."""


class PermanentError(PacingError):
    """Trying the same request again cannot succeed."""


class InvalidResponse(PermanentError):
    """A response body does not follow the documented contract."""


class EngagementRejected(PermanentError):
    """The engagement platform refused the publish with a 4xx status."""

    def __init__(self, message: str, *, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


class DeltaBaseMismatch(EngagementRejected):
    """409: the receiver does not hold the delta's ``base_seq``; the next publish must be full."""


class StaleSequence(EngagementRejected):
    """409: the receiver already holds this ``seq`` or a newer one (fenced out)."""

    def __init__(self, message: str, *, status_code: int, last_seq: int | None) -> None:
        super().__init__(message, status_code=status_code)
        self.last_seq = last_seq


class StaleEpoch(EngagementRejected):
    """409: the receiver holds a newer leadership term (a larger ``epoch``, or this epoch from
    another leader): this cycle's term has ended, whatever Redis says."""

    def __init__(
        self, message: str, *, status_code: int, last_seq: int | None, last_epoch: int | None
    ) -> None:
        super().__init__(message, status_code=status_code)
        self.last_seq = last_seq
        self.last_epoch = last_epoch
