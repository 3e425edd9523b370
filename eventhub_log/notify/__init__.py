"""Wake-up signals between processes: a lost signal only delays, the log is the truth."""

from .base import Notifier
from .poll import PollingNotifier

__all__ = ["Notifier", "PollingNotifier"]
