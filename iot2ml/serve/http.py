"""The HTTP face of iot2ml: a FastAPI app served by uvicorn (`iot2ml serve`).

Hand-written (a server: routes, limits and error mapping read better as one file). It calls the same
`Service` as the MQTT ingester, so every path validates, routes and stores readings alike.

Endpoints: `POST /v1/readings` (JSON, NDJSON or CSV; one reading or a batch; long or wide), latest state
(`GET /v1/devices/{id}/latest`, `GET /v1/latest`), predictions of the champion model (`POST /v1/predict`), the
newest stream scores (`GET /v1/scores`), `GET /healthz` (no token), `GET /metrics` (Prometheus text)
and the OpenAPI docs at `/docs`. Everything but the health check and the docs needs `Authorization: Bearer <token>`.

Who sees what (one rule, `Principal.may_read`, a set lookup on the devices the token was issued for): a device token
reads only its own device, a gateway token the devices behind it, an admin token every device. Writes follow the same
sets (`Principal.may_write`).

    route                         who may call it      what it sees
    POST /v1/readings             any token            writes its own devices' readings; others rejected per record
    GET  /v1/devices/{id}/latest  any token            {id} if in its scope, else 403 (even for ids that do not exist)
    GET  /v1/latest               any token            the devices of its scope; ?site= and ?sensor= filter within it
    GET  /v1/scores               any token            the scores of its scope; ?device= outside it: 403
    POST /v1/predict              any token            devices / rows of its scope, else 403; rows without device_id:
                                                       admin
    GET  /metrics                 admin token          fleet-wide counters (403 for device and gateway tokens)
    GET  /healthz                 anyone, no token     status, uptime, spool depth

Slow and vanishing clients: a body that takes longer than `[ingest] read_timeout` seconds gets 408 and the connection is
closed; a client that closes mid-body costs one warning line; a client that connects and does not finish its request
line and headers within `read_timeout` (slowloris) is disconnected (`header_timeout_protocol`, which `iot2ml serve`
gives uvicorn). uvicorn itself closes kept-alive connections that stay idle `timeout_keep_alive`, 5 s, after a response.
"""
from __future__ import annotations
import asyncio, gc, logging, time
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.requests import ClientDisconnect

from iot2ml.config import Settings, load_settings
from iot2ml.ingest.parse import ParseError, parse_body
from iot2ml.ingest.devices import AuthError, Principal, Registry, authenticate
from iot2ml.serve.scoring import NO_CHAMPION, BadRows, NoChampion, latest_scores
from iot2ml.serve.runtime import RateLimited, Service
from iot2ml.ingest.spool import SpoolFull

__all__ = ['create_app']

log = logging.getLogger('iot2ml.serve.http')

_READING = {'type': 'object', 'description': 'A reading: long (sensor, value) or wide (one key per sensor)',
            'properties': {
                'device_id': {'type': 'string', 'example': 'pump-0001'},
                'ts': {'oneOf': [{'type': 'string', 'example': '2026-01-01T00:00:00Z'},
                                 {'type': 'number', 'description': 'epoch s, ms, us or ns'}]},
                'sensor': {'type': 'string', 'example': 'flow'}, 'value': {'type': 'number', 'example': 12.5},
                'unit': {'type': 'string'}, 'quality': {'type': 'integer', 'minimum': 0, 'maximum': 255}},
            'additionalProperties': True}

class PredictRequest(BaseModel):
    "Either feature rows or device ids, not both."
    model_config = ConfigDict(extra='forbid', json_schema_extra={'examples': [
        {'devices': ['pump-0001']},
        {'rows': [{'device_id': 'pump-0001', 'ts': '2026-01-14T23:00:00Z', 'flow_mean': 41.2, '...': 0.0}]}]})
    rows: list[dict[str, Any]]|None = Field(None, max_length=10_000, description=(
        "feature rows: every column of the model card's `features` (null for unknown), "
        "optionally `device_id` and `ts`"))
    devices: list[str]|None = Field(None, min_length=1, max_length=1_000, description=(
        "device ids: features are built from their newest interval in latest state"))
    @model_validator(mode='after')
    def _one(self):
        if (self.rows is None) == (self.devices is None):
            raise ValueError('send either "rows" (feature rows) or "devices" (device ids), not both or neither')
        return self

class Prediction(BaseModel):
    device_id: str|None = Field(None, description="the device (given in the row, or asked for)")
    ts: str|None = Field(None, description="start of the feature interval the prediction is for")
    risk: float = Field(description="probability of a failure within the model's horizon")
    alert: int = Field(description="1 when risk reaches the model's alert threshold")
    rul_hours: float|None = Field(None, description="remaining useful life estimate, when the model has one")
    anomaly: float|None = Field(None, description="anomaly score, when the model has a detector")
    model_version: str = Field(description="registry version of the model that answered")

class PredictError(BaseModel):
    device_id: str
    status: int = Field(description="404: unknown device or not enough history")
    error: str

class PredictResponse(BaseModel):
    model_version: str = Field(description="the champion version that answered")
    predictions: list[Prediction]
    errors: list[PredictError] = Field(description="devices that could not be scored, and why")

class Score(BaseModel):
    device_id: str
    ts: str = Field(description="start of the feature interval scored")
    scored_at: str
    model_version: str|None
    risk: float|None
    alert: int|None
    rul_hours: float|None
    anomaly: float|None

def _tune_gc() -> None:
    """Tune Python's cyclic garbage collector for a long-running server. A body of 1,000 readings is 1,000 dicts, and
    with the defaults (a young collection every 700 allocations, full ones over every object of pandas, pyarrow and
    FastAPI) collections took about a third of ingestion throughput and doubled p99. So: what lives as long as the
    process (modules, the app) is frozen out of collections, and young collections run every 20,000 allocations."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)

def _error(status:int, message:str, headers:dict|None=None) -> JSONResponse:
    return JSONResponse({'error': message}, status_code=status, headers=headers)

def header_timeout_protocol(seconds:float):
    """uvicorn's HTTP protocol (httptools) with a deadline on the request line and headers: a connection that sends
    nothing, or its headers slower than `seconds`, is closed, so idle sockets cannot pile up. Pass it as
    `uvicorn.run(app, http=header_timeout_protocol(30))`. The body has its own deadline (`_read_body`)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        _deadline = None
        def _arm(self):
            self._disarm()
            self._deadline = self.loop.call_later(seconds, self._expired)
        def _disarm(self):
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
        def _expired(self):
            self._deadline = None
            if not self.transport.is_closing():
                log.info("closed a connection from %s that sent no complete request headers within %g s "
                         "([ingest] read_timeout)",
                         '%s:%d' % self.client if self.client else 'a client', seconds)
                self.transport.close()
        def connection_made(self, transport):
            super().connection_made(transport)
            self._arm()
        def on_message_begin(self):          # a request starts (the first, or the next on a kept-alive connection)
            super().on_message_begin()
            self._arm()
        def on_headers_complete(self):
            self._disarm()
            super().on_headers_complete()
        def connection_lost(self, exc):
            self._disarm()
            super().connection_lost(exc)
    return HeaderTimeoutProtocol

def create_app(settings:Settings|None=None, service:Service|None=None, writer_id:str|None=None) -> FastAPI:
    "The FastAPI app; unless given, `service` is built from `settings` and `writer_id` (and started/stopped with it)."
    settings = settings or load_settings()
    svc = service or Service(settings, writer_id=writer_id)
    if svc.registry is None: svc.registry = Registry.from_settings(settings)
    app = FastAPI(title='iot2ml', version=__import__('iot2ml').__version__, lifespan=_lifespan,
                  description='Telemetry ingestion, latest state and metrics. Send `Authorization: Bearer <token>`.')
    app.state.service, app.state.owns_service, app.state.ingest = svc, service is None, settings.ingest
    app.add_exception_handler(HTTPException, _http_error)
    app.include_router(router)
    return app

@asynccontextmanager
async def _lifespan(app:FastAPI):
    "Start the service if the app built it, load the champion before the first request; close the service at the end."
    svc, own = app.state.service, app.state.owns_service
    if own:
        svc.start()
        _tune_gc()   # the process is this server: tune its garbage collector
    await asyncio.to_thread(lambda: svc.predictor)   # load the champion now, not in the first request
    yield
    if own: await asyncio.to_thread(svc.close)

async def _http_error(request:Request, exc:HTTPException) -> JSONResponse:
    "Every HTTP error as `{'error': message}`, counted by status."
    request.app.state.service.count(exc.status_code)
    return _error(exc.status_code, exc.detail, getattr(exc, 'headers', None))

# ---------------------------------------------------------------------------------------------- who may call
def _service(request:Request) -> Service:
    "The app's `Service` (set by `create_app`)."
    return request.app.state.service

async def principal(request:Request) -> Principal:
    "The caller, from the bearer token (401/403 with a message otherwise)."
    h = request.headers.get('authorization', '')
    token = h[7:].strip() if h.lower().startswith('bearer ') else None
    try: return authenticate(_service(request).registry, token)
    except AuthError as e: raise HTTPException(e.status, e.message) from None

def check_read(who:Principal, devices) -> None:
    "403 naming the token's subject and its scope unless `who` may read every one of `devices`."
    try:
        for d in devices: who.check_read(d)
    except AuthError as e: raise HTTPException(e.status, e.message) from None

def check_admin(who:Principal, what:str) -> None:
    "403 unless `who` holds an admin token: `what` spans every device."
    if who.role != 'admin':
        raise HTTPException(403, f"token for {who.subject} may not read {what}, which spans every device; "
                                 "use an admin token (iot2ml devices add-admin)")

def _write_rule(who:Principal):
    "None for an admin (writes any device), else the reason per device that `who` may not write."
    if who.role == 'admin': return None
    return lambda d: None if who.may_write(d) else (f"token for {who.subject} may not write readings of {d}; "
                                                    "use that device's own token")

def _retry_after(seconds:float) -> dict:
    return {'Retry-After': str(max(1, round(seconds)))}

# ---------------------------------------------------------------------------------------------- the routes
router = APIRouter()

_READINGS_BODY = {'requestBody': {'required': True, 'content': {
    'application/json': {'schema': {'oneOf': [
        _READING, {'type': 'array', 'items': _READING, 'maxItems': 2000},
        {'type': 'object', 'required': ['readings'],
         'properties': {'readings': {'type': 'array', 'items': _READING}}}]}},
    'application/x-ndjson': {'schema': {'type': 'string', 'description': 'one JSON reading per line'}},
    'text/csv': {'schema': {'type': 'string', 'description':
                            'a header line (device_id,ts,sensor,value or device_id,ts,<sensor>...) and rows'}}}}}
_READINGS_RESPONSES = {
    200: {'description': 'accepted count and, per rejected record, its index and the reason'},
    400: {'description': 'the body cannot be parsed'}, 401: {'description': 'no or unknown token'},
    403: {'description': 'revoked token'}, 413: {'description': 'body or batch too large'},
    415: {'description': 'unsupported content type'}, 422: {'description': 'every record was rejected'},
    429: {'description': 'rate limit; see Retry-After'}, 503: {'description': 'spool full; see Retry-After'}}

@router.post('/v1/readings', summary='Send readings', openapi_extra=_READINGS_BODY, responses=_READINGS_RESPONSES)
async def post_readings(request:Request, who=Depends(principal)):
    """One reading or a batch, long (`sensor`, `value`) or wide (a key per sensor), as JSON
    (object, array, or `{"readings": [...]}`), NDJSON or CSV. Valid records are stored even when others are rejected.
    Any token; a device writes only its own readings, a gateway those of the devices behind it, an admin any."""
    svc, lim = _service(request), request.app.state.ingest
    try: body = await _read_body(request, lim.max_body_bytes, lim.read_timeout)
    except ClientDisconnect:
        log.warning("client %s (token for %s) closed the connection in the middle of a body sent to %s; "
                    "nothing was stored", _peer(request), who.subject, request.url.path)
        return Response(status_code=499)   # nobody reads it: the connection is gone
    ct = request.headers.get('content-type', 'application/json')
    parsed = _parse(body, ct, lim.max_batch)
    cost = max(parsed.readings + len(parsed.errors), parsed.records, 1)   # rejects cost too
    try: svc.limiter.take(who.subject, cost)
    except RateLimited as e: raise HTTPException(429, str(e), headers=_retry_after(e.retry_after)) from None
    tables, outcome = svc.route(parsed, source=f"http:{who.subject}", topic='http', forbidden=_write_rule(who),
                                records=lambda: _records_for_deadletter(body, ct))   # read again if one is rejected
    try: await asyncio.wrap_future(svc.store(tables, outcome))
    except SpoolFull as e:
        raise HTTPException(503, f"the ingestion buffer is full; retry after {e.retry_after:.1f} s",
                            headers=_retry_after(e.retry_after)) from None
    status = 200 if outcome.accepted or not outcome.records else 422
    svc.count(status)
    return JSONResponse(outcome.as_dict(), status_code=status)

def _parse(body:bytes, ct:str, max_batch:int):
    "The body parsed by content type `ct`: 415 for an unknown type, 400 if unreadable, 413 past `max_batch` records."
    try: parsed = parse_body(body, ct)
    except ParseError as e:
        raise HTTPException(415 if 'content type' in str(e) else 400, str(e)) from None
    if parsed.records > max_batch:
        raise HTTPException(413, f"the batch has {parsed.records:,} records, more than {max_batch:,}; split it")
    return parsed

@router.get('/v1/devices/{device_id}/latest', summary='Latest values of one device')
async def device_latest(device_id:str, request:Request, who=Depends(principal)):
    """Newest value per sensor by event time, when the device was last heard from, and whether it is online.
    A device's own token, its gateway's or an admin's; others get 403 (before 404, so ids cannot be probed)."""
    check_read(who, [device_id])
    svc = _service(request)
    d = await asyncio.to_thread(svc.state.device, device_id)
    if d is None:
        raise HTTPException(404, f"no readings from device {device_id!r} yet; check the id (iot2ml devices list)")
    sc = await asyncio.to_thread(lambda: latest_scores(svc.predictor.con(), [device_id]))
    d['score'] = sc[0] if sc else None
    return d

_PREDICT_RESPONSES = {
    401: {'description': 'no or unknown token'},
    403: {'description': 'revoked token, or a device or row the token may not read'},
    422: {'description': 'bad body, or rows that lack feature columns (named)'},
    503: {'description': 'no champion model yet (promote one), or latest state does not fit the model'}}

@router.post('/v1/predict', summary='Failure risk from the champion model', response_model=PredictResponse,
             responses=_PREDICT_RESPONSES)
async def predict(body:PredictRequest, request:Request, who=Depends(principal)):
    """Risk, alert, RUL and anomaly score per feature row (`{"rows": [...]}`) or per device (`{"devices": [...]}`:
    features from the device's newest interval in latest state). Devices that cannot be scored come back in `errors`
    (status 404: unknown, or less history than the model's features need). Answered by the champion, which reloads by
    itself when another version is promoted. A device or gateway token asks only for the devices it may read, and sends
    only rows with their `device_id`; rows without one need an admin token (403 otherwise)."""
    _check_predict(who, body)
    svc = _service(request)
    pr = svc.predictor
    c = pr.champion.current
    if c is None: raise HTTPException(503, NO_CHAMPION)
    try: preds, errors = await _predictions(pr, body, c)
    except BadRows as e: raise HTTPException(422, str(e)) from None
    except NoChampion as e: raise HTTPException(503, str(e)) from None
    svc.count(200)
    body = orjson.dumps({'model_version': c.version, 'predictions': preds, 'errors': errors})
    return Response(body, media_type='application/json')

def _check_predict(who:Principal, body:PredictRequest) -> None:
    "403 unless `who` may read every device asked for, or every row's `device_id` (rows without one: admin only)."
    if body.devices is not None: check_read(who, body.devices)
    elif who.devices is not None:
        if any('device_id' not in r for r in body.rows):
            raise HTTPException(403, f"token for {who.subject} may send only rows with a device_id it may read "
                                     f"({who.scope}); rows without one need an admin token")
        check_read(who, (r['device_id'] for r in body.rows))

async def _predictions(pr, body:PredictRequest, c) -> tuple[list, list]:
    "(predictions, errors) of the champion `c` for the devices (from the cache when it holds them all) or the rows."
    if body.rows is not None: return await asyncio.to_thread(pr.rows, body.rows, c), []
    preds = pr.cached(body.devices, c)
    if preds is None: return await asyncio.to_thread(pr.devices, body.devices, c)
    return preds, []

@router.get('/v1/scores', summary='Newest stream score per device', response_model=list[Score])
async def scores(request:Request,
                 alert:int|None=Query(None, ge=0, le=1, description='only devices with this alert (1: alerting)'),
                 device:list[str]|None=Query(None, description='only these devices'), who=Depends(principal)):
    """The newest score per device from streaming scoring (`[scoring] enabled`), with the model version that scored it.
    Any token, for the devices it may read (all of them for an admin); `device` outside them: 403."""
    if device is not None: check_read(who, device)
    else: device = who.readable()
    if device == []: return Response(b'[]', media_type='application/json')
    svc = _service(request)
    out = await asyncio.to_thread(lambda: latest_scores(svc.predictor.con(), device, alert))
    return Response(orjson.dumps(out), media_type='application/json')

@router.get('/v1/latest', summary='Latest values of many devices')
async def latest(request:Request, sensor:str|None=Query(None, description='only this sensor'),
                 site:str|None=Query(None, description="only the devices of this site (from the registry)"),
                 who=Depends(principal)):
    """Newest value per device and sensor, optionally one sensor and one site. Any token, for the devices it may read
    (all of them for an admin); `site` and `sensor` filter within those."""
    svc = _service(request)
    devices = None if site is None else [d for d, info in svc.device_info().items() if info[1] == site]
    devices = who.readable(devices)
    if devices == []: return Response(b'[]', media_type='application/json')
    df = await asyncio.to_thread(svc.state.latest, devices, sensor)
    return Response(orjson.dumps(df.to_dict(orient='records'), default=str), media_type='application/json')

@router.get('/healthz', summary='Health check (no token)')
async def healthz(request:Request):
    "200 when the service accepts readings. No token: it says nothing about any device."
    svc = _service(request)
    st = svc.writer.stats
    return {'status': 'ok', 'uptime_s': round(time.time() - svc.started, 1), 'spool_depth_rows': st['depth_rows']}

@router.get('/metrics', summary='Prometheus metrics', response_class=PlainTextResponse)
async def metrics(request:Request, who=Depends(principal)):
    "Counters and gauges in the Prometheus text format, over every device: admin tokens only (403 otherwise)."
    check_admin(who, '/metrics')
    return PlainTextResponse(prometheus_text(_service(request)), media_type='text/plain; version=0.0.4')

async def _read_body(request:Request, limit:int, timeout:float) -> bytes:
    "The request body: 413 past `limit` bytes (before reading, when Content-Length says so), 408 after `timeout` s."
    size = request.headers.get('content-length')
    too_big = lambda: HTTPException(413, f"the body is larger than {limit:,} bytes; split it into smaller batches")
    if size is not None and size.isdigit() and int(size) > limit: raise too_big()
    chunks, got = [], 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                chunks.append(chunk)
                got += len(chunk)
                if got > limit: raise too_big()
    except TimeoutError:
        log.warning("client %s sent %d bytes of a body to %s in %s s and was cut off (408)",
                    _peer(request), got, request.url.path, timeout)
        raise HTTPException(408, f"the body took longer than {timeout:g} s to arrive ([ingest] read_timeout); "
                                 "send it at once or in smaller batches", headers={'Connection': 'close'}) from None
    return b''.join(chunks)

def _peer(request:Request) -> str:
    c = request.client
    return f"{c.host}:{c.port}" if c else 'unknown'

# ---------------------------------------------------------------------------------------------- dead letters
def _lenient_loads(b:bytes):
    "JSON by orjson, or by the standard library when orjson cannot (NaN, Infinity, a lone surrogate)."
    import json
    try: return orjson.loads(b)
    except orjson.JSONDecodeError: return json.loads(b)   # ValueError if not JSON at all

def _json_records(body:bytes) -> list:
    "The records of a JSON body: its `readings`, its list, or the one object."
    obj = _lenient_loads(body)
    if isinstance(obj, dict) and isinstance(obj.get('readings'), list): return obj['readings']
    return obj if isinstance(obj, list) else [obj]

def _ndjson_records(body:bytes) -> list:
    "A record per non-blank line; a line that is not JSON as its text."
    out = []
    for l in body.splitlines():
        if not l.strip(): continue
        try: out.append(_lenient_loads(l))
        except (ValueError, RecursionError): out.append(l.decode('utf-8', 'replace'))
    return out

def _csv_records(body:bytes) -> list|None:
    "CSV rows as {column: the text of the cell}."
    import csv, io
    rows = [r for r in csv.reader(io.StringIO(body.decode('utf-8', 'replace'))) if r]
    return [dict(zip(rows[0], r)) for r in rows[1:]] if rows else None

def _records_for_deadletter(body:bytes, ct:str) -> list|None:
    """The sender's records, so a dead letter holds what was sent: JSON and NDJSON as the standard library reads them
    when orjson cannot (so a NaN stays NaN, not null), CSV rows as {column: the text of the cell}."""
    import csv
    try:
        if ct.startswith('application/json'): return _json_records(body)
        if 'ndjson' in ct or 'jsonl' in ct: return _ndjson_records(body)
        if ct.startswith('text/csv'): return _csv_records(body)
    except (ValueError, RecursionError, csv.Error): return None   # (orjson.JSONDecodeError is a ValueError)
    return None

# ---------------------------------------------------------------------------------------------- /metrics
def _one(v) -> list: return [({}, v)]

def _by(label:str, counts:dict) -> list:
    "A sample per key of `counts` (sorted), labelled `label`; one sample of 0 labelled 'none' when empty."
    return [({label: str(k)}, v) for k, v in sorted(counts.items())] or [({label: 'none'}, 0)]

def _ingest_metrics(svc:Service) -> list[tuple]:
    "(name, kind, help, samples) of ingestion: records, responses, spool, writer, latest state."
    c, w = svc.counters, svc.writer.stats
    responses = [({'status': str(k)}, v) for k, v in sorted(c.by_status.items())]
    return [
        ('records_received_total', 'counter', 'Records received (HTTP and MQTT).', _one(c.received)),
        ('records_accepted_total', 'counter', 'Records accepted and durable.', _one(c.accepted)),
        ('readings_accepted_total', 'counter', 'Readings accepted and durable.', _one(c.readings)),
        ('records_rejected_total', 'counter', 'Records rejected, by field and reason.',
         _by('reason', svc.deadletters.by_reason)),
        ('responses_total', 'counter', 'HTTP responses by status.', responses),
        ('spool_depth_rows', 'gauge', 'Readings acknowledged and not yet in the lake.', _one(w['depth_rows'])),
        ('spool_depth_bytes', 'gauge', 'Bytes acknowledged and not yet in the lake.', _one(w['depth_bytes'])),
        ('flushes_total', 'counter', 'Batches landed in the lake.', _one(w['flushes'])),
        ('flush_seconds', 'gauge', 'Duration of the last landing.', _one(w['last_flush_seconds'] or 0)),
        ('flush_lag_seconds', 'gauge', 'Age of the oldest reading of the last landing when it landed.',
         _one(w['last_flush_lag'] or 0)),
        ('fsyncs_total', 'counter', 'fsyncs of the spool (group commits).', _one(w['fsyncs'])),
        ('spool_full_total', 'counter', 'Appends refused by backpressure.', _one(w['spool_full'])),
        ('spool_replayed_rows_total', 'counter',
         'Readings replayed from the spool into the lake at start (acknowledged before a crash).',
         _one(w['replayed_rows'])),
        ('latest_state_dropped_total', 'counter', 'Batches the latest-state updater could not apply.',
         _one(svc.updater.errors))]

def _model_metrics(pr) -> list[tuple]:
    "(name, kind, help, samples) of the champion and its predictions; none before the predictor is built."
    if pr is None: return []
    ch = pr.champion
    c = ch.current
    return [
        ('model_info', 'gauge', 'The champion model version serving (label version; 0 when there is none).',
         [({'version': c.version}, 1)] if c else [({'version': 'none'}, 0)]),
        ('model_reloads_total', 'counter', 'Champion bundles loaded (hot reloads).', _one(ch.reloads)),
        ('model_reload_failures_total', 'counter', 'Champion bundles that failed to load (the old one kept serving).',
         _one(ch.failures)),
        ('predictions_total', 'counter', 'Predictions served by /v1/predict and streaming scoring.', _one(pr.served)),
        ('prediction_cache_hits_total', 'counter', 'Device predictions answered from the cache (state unchanged).',
         _one(pr.cache_hits))]

def _scoring_metrics(sc) -> list[tuple]:
    "(name, kind, help, samples) of streaming scoring; none when it is off."
    if sc is None: return []
    return [
        ('scoring_passes_total', 'counter', 'Streaming scoring passes.', _one(sc.passes)),
        ('scoring_devices_scored_total', 'counter', 'Devices scored by streaming scoring.', _one(sc.scored)),
        ('scoring_devices_skipped_total', 'counter', 'Devices not scored, by reason.', _by('reason', sc.skipped)),
        ('scoring_last_pass_seconds', 'gauge', 'Duration of the last scoring pass.',
         _one(round(sc.last_pass_seconds, 4))),
        ('scoring_pending_devices', 'gauge', 'Devices marked for the next pass.', _one(sc.pending)),
        ('scoring_errors_total', 'counter', 'Scoring passes that failed.', _one(sc.errors))]

def _exposition(name:str, kind:str, help:str, samples:list) -> list[str]:
    "One metric's lines: HELP, TYPE and a line per (labels, value) sample."
    lines = [f"# HELP iot2ml_{name} {help}", f"# TYPE iot2ml_{name} {kind}"]
    for labels, v in samples:
        lab = '{' + ','.join(f'{k}="{x}"' for k, x in labels.items()) + '}' if labels else ''
        lines.append(f"iot2ml_{name}{lab} {v}")
    return lines

def prometheus_text(svc:Service) -> str:
    "The service's metrics in the Prometheus text exposition format."
    metrics = _ingest_metrics(svc) + _model_metrics(svc._predictor) + _scoring_metrics(svc.scorer)
    return '\n'.join(line for m in metrics for line in _exposition(*m)) + '\n'
