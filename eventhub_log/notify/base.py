"""The seam every wake-up backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable


class Notifier(ABC):
    """Tells this process that another one may have appended to the log."""

    @abstractmethod
    async def start(self, wake: Callable[[], None]) -> None:
        """Begin calling ``wake`` whenever the log may have grown."""

    @abstractmethod
    async def stop(self) -> None: ...

    async def published(self, position: int) -> None:  # noqa: B027 (optional hook)
        """This process committed up to ``position``; tell the others if we can."""
