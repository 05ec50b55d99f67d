"""The data lake: Parquet tiers (raw, processed, published) with a catalog, reference tables and the SQL sandbox
(`store`), and the notebook helpers that look at it (`explore`)."""
from .._lazy import lazy_exports
__getattr__, __dir__ = lazy_exports(__name__, ['store', 'explore'])
