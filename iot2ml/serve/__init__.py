"""The long-running processes, hand-written: the ingestion runtime shared by the faces (`runtime`), the HTTP API
(`http`), the MQTT ingester (`mqtt`) and the champion on the live stream (`scoring`)."""
from .._lazy import lazy_exports
__getattr__, __dir__ = lazy_exports(__name__, ['runtime', 'http', 'mqtt', 'scoring'])
