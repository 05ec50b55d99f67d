"""Simulated fleets: the demo's pumps and the test bed, as history (`fleet`) or streamed live over MQTT/HTTP
(`live`)."""
from .._lazy import lazy_exports
__getattr__, __dir__ = lazy_exports(__name__, ['fleet', 'live'])
