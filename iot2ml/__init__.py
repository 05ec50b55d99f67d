"""A Jupyter-first workbench from IoT sensor telemetry to machine-learning models on the live stream.

Modules:

- `iot2ml.api`: The HTTP face of iot2ml: a FastAPI app served by uvicorn (`iot2ml serve`).
- `iot2ml.kernel`: Kernels for the notebooks iot2ml runs itself (papermill stages, tests), talking over CurveZMQ-encrypted sockets.
- `iot2ml.live`: Live fleet: stream simulated pumps in real time over MQTT or HTTP (`iot2ml simulate --live`), for demos and load tests.
- `iot2ml.mqtt`: The MQTT face of iot2ml: `iot2ml mqtt` subscribes to a broker and stores what devices publish.
- `iot2ml.scoring`: The champion model on the live stream: `Champion` (the registry's champion bundle, hot-reloaded), `Predictor` (feature rows or device ids -> risk, alert, RUL, anomaly, with caches) and `Scorer` (scores the devices heard from in batches, in a background thread, into the lake and latest state).
- `iot2ml.service`: The ingestion service core shared by the HTTP API and the MQTT ingester.
- `iot2ml.spool`: A write-ahead spool in front of the lake: readings are acknowledged once fsynced, landed as Parquet in batches."""

__version__ = "0.1.0"
