"""The ingestion service core shared by the HTTP API and the MQTT ingester.

A hand-written module (wiring of long-lived parts, not a notebook's worth of lessons): it builds, from the
settings, the lake, the write-ahead spool and lake writer, the latest-state store and its updater, the
dead-letter store, the ingestor (validation, routes, transforms) and the per-credential rate limiter, and it
keeps the counters that `/metrics` exposes. Every face calls `Service.ingest`, so HTTP, MQTT and file imports
validate, route and store readings the same way.

Model serving (iot2ml.serve.scoring) is wired here too, so HTTP and MQTT get it alike: `Service.predictor` (the
champion, hot-reloaded, with its caches; built on first use) answers /v1/predict; with `[scoring] enabled`, readings
that go to 'latest' also go to 'score', whose hook marks their devices for the `Scorer`'s next pass.
"""
from __future__ import annotations
import concurrent.futures, json, logging, math, sqlite3, threading, time
from datetime import datetime, timezone
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np, pyarrow as pa, pyarrow.compute as pc

from iot2ml.config import ScoringSettings, Settings, load_settings, private
from iot2ml.errors import StateError
from iot2ml.ingest.routing import DeadLetters, Ingestor, Outcome, Route
from iot2ml.lake.store import Lake
from iot2ml.ingest.parse import Parsed
from iot2ml.schema import Limits
from iot2ml.ingest.spool import SpooledWriter
from iot2ml.ingest.state import LatestState, StateUpdater

__all__ = ['Service', 'RateLimited', 'TokenBucket', 'configure_logging']

log = logging.getLogger('iot2ml.serve.runtime')

class JsonFormatter(logging.Formatter):
    "One JSON object per line: time, level, logger, message, and any `extra` fields."
    _skip = set(vars(logging.makeLogRecord({}))) | {'message', 'asctime'}
    def format(self, r:logging.LogRecord) -> str:
        d = {'ts': datetime.fromtimestamp(r.created, timezone.utc).isoformat(timespec='milliseconds'),
             'level': r.levelname.lower(), 'logger': r.name, 'msg': r.getMessage()}
        d.update({k: v for k, v in vars(r).items() if k not in self._skip})
        if r.exc_info: d['exc'] = self.formatException(r.exc_info)
        return json.dumps(d, default=str)

def configure_logging(level:str='info') -> None:
    "Structured (JSON lines) logs on stderr for iot2ml's services and uvicorn."
    h = logging.StreamHandler()
    h.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [h]
    root.setLevel(level.upper())

class RateLimited(StateError, RuntimeError):
    "A credential sent more readings than its rate allows; retry after `retry_after` seconds."
    def __init__(self, retry_after:float):   # seconds until the readings would be accepted
        self.retry_after = retry_after
        super().__init__("rate limit exceeded",
                         fix=f"retry after {retry_after:.1f} s or send fewer readings per second")

class TokenBucket:
    "Per-key token buckets: `rate` readings per second with bursts up to `burst`."
    def __init__(self, rate:float, burst:float):
        self.rate, self.burst, self._b, self._lock = rate, burst, {}, threading.Lock()

    def take(self, key:str, n:int) -> None:
        "Take `n` tokens for `key` or raise `RateLimited`."
        now = time.monotonic()
        with self._lock:
            tokens, last = self._b.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if n > tokens and not (tokens >= self.burst and n > self.burst):   # past the burst: passes when full
                self._b[key] = (tokens, now)
                raise RateLimited(max(0.1, math.ceil((n - tokens) / self.rate * 10) / 10))
            self._b[key] = (tokens - n, now)

@dataclass
class Counters:
    received: int = 0            # records received
    accepted: int = 0            # records accepted (durable in the spool)
    readings: int = 0            # readings accepted
    requests: int = 0
    rejected_bodies: int = 0     # bodies refused whole (parse error, too large, rate limit, spool full, auth)
    by_status: dict = field(default_factory=dict)

def _readings_of(table:pa.Table, sensors:dict[str, list]) -> np.ndarray:
    "The mask of the readings of `table` of a device in `sensors` and one of its sensors there."
    dev, sen = table.column('device_id'), table.column('sensor')
    mask = np.zeros(table.num_rows, bool)
    for d, ss in sensors.items():
        mask |= pc.and_(pc.equal(dev, d), pc.is_in(sen, value_set=pa.array(ss))).to_numpy(zero_copy_only=False)
    return mask

def _pairs(table:pa.Table) -> list[tuple[str, str]]:
    "The distinct (device_id, sensor) of `table`, in order of first appearance (one device: two Arrow `unique`s)."
    dev = pc.unique(table.column('device_id'))
    if len(dev) == 1: return [(dev[0].as_py(), s) for s in pc.unique(table.column('sensor')).to_pylist()]
    p = table.select(['device_id', 'sensor']).group_by(['device_id', 'sensor'], use_threads=False).aggregate([])
    return list(zip(p.column('device_id').to_pylist(), p.column('sensor').to_pylist()))

class Service:
    "Lake, spool writer, latest state, dead letters and ingestor, built from the settings."
    # Latest-state updates per second, on average and at once: an update has a fixed cost of several ms, and run for
    # every request under load it took half the GIL from ingestion. Past the burst, batches wait and go as one.
    latest_rate, latest_burst = 5.0, 10.0
    def __init__(self, settings:Settings|None=None,    # default: `load_settings()`
                 writer_id:str|None=None,               # names the spool and the lake files; default [ingest] writer_id
                 hooks:dict[str, Callable[[pa.Table], None]]|None=None,   # destination -> called with its readings
                 scoring:ScoringSettings|None=None):    # default: the settings' [scoring]
        s = self.settings = settings or load_settings()
        ing = s.ingest
        state_dir = private(s.path('state_dir'))   # token hashes and readings: not for other users
        self.lake = Lake.from_settings(s)
        self.state = LatestState(state_dir/'latest.sqlite', stale_after=ing.stale_after, bucket=ing.bucket,
                                 window=ing.window)
        self.updater = StateUpdater(self.state)
        self._latest, self._latest_timer = [], None
        self._latest_tokens, self._latest_at = self.latest_burst, time.monotonic()
        self.deadletters = DeadLetters.from_settings(s)   # state_dir/'deadletter', with the [ingest] caps
        self.hooks = dict(hooks or {})
        self._sensors: dict[str, set] = {}   # device -> sensors seen (see sensor_cap)
        self._sensors_lock = threading.Lock()
        self.ingestor = Ingestor([Route(**r.model_dump()) for r in ing.routes], ing.default_to, self.deadletters,
                                 device_types=self._device_types, limits=Limits.from_settings(ing),
                                 sensor_cap=self.sensor_cap)
        wid = writer_id or ing.writer_id or 'ingest-0'   # the faces pass their own (http-<port>, mqtt-<client id>)
        self.writer = SpooledWriter(self.lake, state_dir/'spool'/wid, writer_id=wid, flush_rows=ing.flush_rows,
                                    flush_bytes=ing.flush_bytes, flush_seconds=ing.flush_seconds,
                                    max_bytes=ing.max_spool_bytes, on_flush=self._on_flush)
        self.limiter = TokenBucket(ing.rate_limit, ing.rate_burst)
        self.counters = Counters()
        self._lock = threading.Lock()
        self._info = None
        self.registry = None   # set by the faces that authenticate (HTTP); None means trust the transport (MQTT ACLs)
        self.started = time.time()
        self.scoring = scoring or getattr(s, 'scoring', None) or ScoringSettings()
        self._predictor, self.scorer = None, None
        if self.scoring.enabled: self._wire_scoring(wid)

    def _registry_dir(self) -> Path:
        reg = getattr(self.settings, 'registry', None)
        p = Path(reg.dir) if reg is not None else Path('state')/'registry'
        return p if p.is_absolute() else self.settings.path('root')/p

    @property
    def predictor(self):
        "The champion model and its caches (iot2ml.serve.scoring.Predictor), built on first use."
        if self._predictor is None:
            with self._lock:
                if self._predictor is None: self._predictor = self._build_predictor()
        return self._predictor

    def _build_predictor(self):
        "The champion of the model registry, with the params' feature spec for bundles that carry none."
        from iot2ml.serve.scoring import Champion, Predictor
        from iot2ml.ml.registry import ModelRegistry
        from iot2ml.ml.features import FeatureSpec
        from iot2ml.config import Params, load_params
        pf = self.settings.path('root')/'params.yaml'
        prm = load_params(pf) if pf.exists() else Params()
        spec = FeatureSpec(every=prm.prepare.every, min_coverage=prm.prepare.min_coverage,
                           windows=list(prm.features.windows), normal_window=prm.features.normal_window,
                           lags=list(prm.features.lags))
        champ = Champion(ModelRegistry(self._registry_dir()), self.scoring.reload_check, fallback_spec=spec)
        return Predictor(champ, self.state.path, bucket=self.settings.ingest.bucket)

    def _wire_scoring(self, writer_id:str) -> None:
        "Send what goes to 'latest' to 'score' too; its hook marks the devices for the scorer."
        from iot2ml.serve.scoring import Scorer
        self.scorer = Scorer(self.predictor, self.lake, dataset=self.scoring.dataset, interval=self.scoring.interval,
                             writer_id=writer_id)
        self.hooks.setdefault('score', self.scorer.mark)
        ing = self.ingestor
        if 'latest' in ing.default_to and 'score' not in ing.default_to: ing.default_to.append('score')
        for r in ing.routes:
            if 'latest' in r.to and 'score' not in r.to: r.to = [*r.to, 'score']

    def device_info(self) -> dict[str, tuple]:
        "device_id -> (type, site) from the registry, refreshed at most every 5 s."
        now = time.monotonic()
        if self.registry is None: return {}
        if self._info is None or self._info[0] < now:
            devices = self.registry.devices(include_revoked=False)
            self._info = (now + 5, {d.device_id: (d.type, d.site) for d in devices})
        return self._info[1]

    def _device_types(self) -> dict:
        return {d: t for d, (t, _) in self.device_info().items()}

    def _known_sensors(self, devices:list[str]) -> dict[str, set]:
        """device -> the sensors it has sent; a device not seen yet since start is read from latest state. (Under
        `_sensors_lock`.)"""
        todo = [d for d in devices if d not in self._sensors]
        if todo and self.state.path.exists():
            con = sqlite3.connect(f"file:{self.state.path}?mode=ro", uri=True, timeout=30)
            try:
                for d in todo: self._sensors[d] = set()
                for i in range(0, len(todo), 500):
                    part = todo[i:i + 500]
                    q = f"SELECT device_id, sensor FROM latest WHERE device_id IN ({','.join('?' * len(part))})"
                    for d, s in con.execute(q, part): self._sensors[d].add(s)
            finally: con.close()
        for d in todo: self._sensors.setdefault(d, set())
        return self._sensors

    def sensor_cap(self, table:pa.Table, groups:np.ndarray|None=None) -> tuple[np.ndarray, dict[str, str]]|None:
        """The readings of `table` that would give their device more distinct sensors than
        `ingest.max_sensors_per_device` (with `groups`, such as record numbers, every reading of such a reading's group)
        as a mask, and the reason per device; None if all fit. The new sensors of the readings that fit are remembered
        from then on."""
        cap = self.settings.ingest.max_sensors_per_device
        with self._sensors_lock:
            p = _pairs(table)
            known = self._known_sensors(list(dict.fromkeys(d for d, _ in p)))
            new: dict[str, list] = {}
            for d, s in p:
                if s not in known[d]: new.setdefault(d, []).append(s)
            over = {d: ss[max(cap - len(known[d]), 0):] for d, ss in new.items() if len(known[d]) + len(ss) > cap}
            if not over:
                for d, ss in new.items(): known[d].update(ss)
                return None
            mask = _readings_of(table, over)
            if groups is not None: mask = np.isin(groups, np.unique(groups[mask]))
            for d, s in _pairs(table.filter(pa.array(~mask))): known[d].add(s)
        why = {d: f"device {d} has {cap:,} distinct sensors, as many as ingest.max_sensors_per_device allows; "
                  "send readings of its known sensors or raise that setting" for d in over}
        return mask, why

    def start(self) -> 'Service':
        "Replay the spool into the lake and start the writer (and the scorer, if scoring is enabled)."
        self.writer.start()
        if self.scorer is not None: self.scorer.start()
        return self

    def close(self) -> None:
        "Land everything accepted, stop the threads."
        self.writer.close()
        with self._lock: t = self._latest_timer
        if t is not None: t.cancel()
        self._flush_latest()
        self.updater.close()
        if self.scorer is not None: self.scorer.close()   # a last pass, now that latest state holds everything
        if self._predictor is not None: self._predictor.champion.close()

    def _on_flush(self, info:dict) -> None:
        keys = ('batch_id', 'rows', 'seconds', 'lag')
        log.info("landed a batch in the lake", extra={k: info.get(k) for k in keys if k in info})

    def count(self, status:int) -> None:
        "Count a response status (for /metrics)."
        with self._lock: self.counters.by_status[status] = self.counters.by_status.get(status, 0) + 1

    def route(self, parsed:Parsed, source:str, topic:str='http', forbidden=None, records=None,
              now=None) -> tuple[dict, Outcome]:
        "Validate and route `parsed`; rejected records are dead-lettered. Nothing is stored yet."
        tables, outcome = self.ingestor.process(parsed, source=source, topic=topic, forbidden=forbidden,
                                                records=records, now=now)
        with self._lock:
            self.counters.received += outcome.records
            self.counters.requests += 1
        return tables, outcome

    def _to_latest(self, table:pa.Table) -> None:
        "Hand `table` to the latest-state updater now if the update rate allows, else with what comes until a timer."
        with self._lock:
            self._latest.append(table)
            if self._latest_timer is not None: return
            now = time.monotonic()
            refill = (now - self._latest_at) * self.latest_rate
            self._latest_tokens = min(self.latest_burst, self._latest_tokens + refill)
            self._latest_at = now
            if self._latest_tokens >= 1:
                self._put_latest()
                return
            self._latest_timer = t = threading.Timer((1 - self._latest_tokens) / self.latest_rate, self._flush_latest)
            t.daemon = True
        t.start()

    def _flush_latest(self) -> None:
        with self._lock:
            self._latest_timer = None
            self._put_latest()

    def _put_latest(self) -> None:
        "(Under the lock, so batches reach the updater in order and before close() ends it.)"
        batch, self._latest = self._latest, []
        if batch:
            self._latest_tokens -= 1
            self.updater.put(batch[0] if len(batch) == 1 else pa.concat_tables(batch, promote_options='default'))

    def store(self, tables:dict, outcome:Outcome) -> concurrent.futures.Future:
        """Durably store routed readings. The future resolves once the lake part is fsynced in the spool; then latest
        state and the hooks get their parts. Raises `SpoolFull` (nothing stored) under backpressure."""
        lake, latest = tables.get('lake'), tables.get('latest')
        def done(f=None):
            if f is not None and f.exception() is not None: return
            if latest is not None and latest.num_rows: self._to_latest(latest)
            for name, fn in self.hooks.items():
                if name in tables: fn(tables[name])
            with self._lock:
                self.counters.accepted += outcome.accepted
                self.counters.readings += lake.num_rows if lake is not None else 0
        if lake is None or not lake.num_rows:
            fut = concurrent.futures.Future()
            fut.set_result(0)
            done()
            return fut
        fut = self.writer.append(lake)
        fut.add_done_callback(done)
        return fut
