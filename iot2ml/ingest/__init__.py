"""Getting readings in: parse bodies and files (`parse`), the device registry and its tokens (`devices`), latest state
(`state`), routes, transforms and the ingestor (`routing`), the dead-letter store (`deadletters`), and the write-ahead
spool in front of the lake (`spool`, hand-written)."""
from .._lazy import lazy_exports
__getattr__, __dir__ = lazy_exports(__name__, ['parse', 'devices', 'state', 'deadletters', 'routing', 'spool'])
