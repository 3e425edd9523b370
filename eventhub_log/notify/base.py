"""The seam every wake-up backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable


class Notifier(ABC):
    """Tells this process that another one may have appended to the log.

    ``published`` and ``subscriptions_changed`` are called by the writer and the
    hub right after a commit: they must not block (queue the signal and return).
    A signal that never arrives only delays delivery: the log is the truth, and
    the polling notifier reads it anyway.
    """

    @abstractmethod
    async def start(self, wake: Callable[[], None]) -> None:
        """Begin calling ``wake`` whenever the log may have grown."""

    @abstractmethod
    async def stop(self) -> None: ...

    def published(self, position: int) -> None:  # noqa: B027 (optional hook)
        """This process committed up to ``position``; tell the others if we can."""

    def subscriptions_changed(self) -> None:  # noqa: B027 (optional hook)
        """This process recorded a subscription change; tell the others if we can."""
