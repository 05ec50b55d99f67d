"""A Jupyter-first workbench from IoT sensor telemetry to machine-learning models on the live stream.

Modules:

- `iot2ml.ingest.spool`: A write-ahead spool in front of the lake: readings are acknowledged once fsynced, landed as Parquet in batches.
- `iot2ml.ml.kernel`: Kernels for the notebooks iot2ml runs itself (papermill stages, tests), talking over CurveZMQ-encrypted sockets.
- `iot2ml.serve.http`: The HTTP face of iot2ml: a FastAPI app served by uvicorn (`iot2ml serve`).
- `iot2ml.serve.mqtt`: The MQTT face of iot2ml: `iot2ml mqtt` subscribes to a broker and stores what devices publish.
- `iot2ml.serve.runtime`: The ingestion service core shared by the HTTP API and the MQTT ingester.
- `iot2ml.serve.scoring`: The champion model on the live stream: `Champion` (the registry's champion bundle, hot-reloaded), `Predictor` (feature rows or device ids -> risk, alert, RUL, anomaly, with caches) and `Scorer` (scores the devices heard from in batches, in a background thread, into the lake and latest state).
- `iot2ml.sim.live`: Live fleet: stream simulated pumps in real time over MQTT or HTTP (`iot2ml stream`), for demos and load tests."""

__version__ = "0.1.0"

from ._compat import install as _install_aliases
_install_aliases()   # iot2ml 0.1's flat module names, for model bundles pickled before the move into subpackages
