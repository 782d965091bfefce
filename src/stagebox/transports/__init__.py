"""Client-side transports: the contract and its implementations."""

from stagebox.transports.base import Transport
from stagebox.transports.http import TusTransport

__all__ = ["Transport", "TusTransport"]
