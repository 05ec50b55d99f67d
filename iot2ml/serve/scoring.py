"""The champion model on the live stream: `Champion` (the registry's champion bundle, hot-reloaded), `Predictor`
(feature rows or device ids -> risk, alert, RUL, anomaly, with caches) and `Scorer` (scores the devices heard from in
batches, in a background thread, into the lake and latest state).

Hand-written (a service: threads, caches and their invalidation read better as one file). It sits in the services
layer: it calls the ML code (features, models) and the data layer (lake, latest state); the faces (api, mqtt via
`Service`) call it.

Hot reload: `Champion` polls the registry's `champion_token()` every `reload_check` seconds in a daemon thread. When
it changes, the new bundle is loaded and tried on one row *before* one reference (`Champion.current`) is swapped; a
request reads that reference once and uses that one model to the end, so no request sees a half-loaded model. A
bundle that fails to load is logged and the old one keeps serving.

Which interval a device is scored at: its newest *complete* one, the interval before the one holding its newest
reading (the model was trained on complete intervals; a half-filled current hour would look to it like missing
sensors). So the feature row and the prediction of a device change once per interval: they are cached per (device,
interval, feature spec) and (device, interval, model version), and a request for a device costs one SQLite
primary-key lookup (its newest reading time) unless a new interval completed or another champion was promoted. Late
readings of an interval already scored do not refresh its cached score.

Streaming scoring shares the machine with ingestion, not the interpreter: a pass's work (online features over each
device's 241-hour window, the model, the detector: seconds of pandas for 1,000 devices) runs in one worker process
started with `nice` 10, so it never holds the server's GIL and gets the CPU only when ingestion leaves some; the
server thread only picks the devices, writes the scores and fills the predictor's cache with them. The ingest hook
(`Scorer.mark`) keeps the batches' (device_id, ts) columns; they are grouped once per pass."""
from __future__ import annotations
import logging, math, os, sqlite3, threading, time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np, pandas as pd, pyarrow as pa, pyarrow.compute as pc

from iot2ml.errors import InputError, StateError
from iot2ml.ml.features import FeatureSpec, online_features
from iot2ml.lake.store import Lake, split_by_date
from iot2ml.ml.models import load_model
from iot2ml.ingest.state import LatestState

__all__ = ['NoChampion', 'BadRows', 'Loaded', 'Champion', 'Predictor', 'Scorer', 'SCORES_SCHEMA', 'ensure_scores_table',
           'latest_scores', 'NO_CHAMPION']

log = logging.getLogger('iot2ml.serve.scoring')

NO_CHAMPION = ("no champion model yet; promote one: iot2ml models promote V or iot2ml retrain")

class NoChampion(StateError, RuntimeError):
    "The registry has no champion model (yet), or the champion does not fit latest state."
    def __init__(self, msg:str=NO_CHAMPION): super().__init__(msg)   # what is wrong and what to do

class BadRows(InputError):
    "Feature rows that the model cannot score; the message names the columns."

SCORES_SCHEMA = pa.schema([('device_id', pa.string()), ('ts', pa.timestamp('us', tz='UTC')),
                           ('scored_at', pa.timestamp('us', tz='UTC')), ('model_version', pa.string()),
                           ('risk', pa.float64()), ('alert', pa.int8()),
                           ('rul_hours', pa.float64()), ('anomaly', pa.float64())])

_SCORES_SQL = """CREATE TABLE IF NOT EXISTS scores (device_id TEXT PRIMARY KEY, ts INTEGER NOT NULL,
  scored_at INTEGER NOT NULL, model_version TEXT, risk REAL, alert INTEGER, rul_hours REAL, anomaly REAL)
  WITHOUT ROWID"""
_UPSERT_SCORE = """INSERT INTO scores VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(device_id) DO UPDATE SET ts=excluded.ts,
  scored_at=excluded.scored_at, model_version=excluded.model_version, risk=excluded.risk, alert=excluded.alert,
  rul_hours=excluded.rul_hours, anomaly=excluded.anomaly WHERE excluded.ts >= scores.ts"""

def ensure_scores_table(con:sqlite3.Connection) -> None:
    "Create the latest-state `scores` table (newest score per device) if it is missing."
    con.execute(_SCORES_SQL)

def _marks(xs:list) -> str:
    "SQL placeholders for the values of `xs`: `?,?,?`."
    return ','.join('?' * len(xs))

def _iso(us) -> str|None:
    return None if us is None else pd.Timestamp(int(us), unit='us', tz='UTC').isoformat()

def latest_scores(con:sqlite3.Connection, devices:list[str]|None=None, alert:int|None=None) -> list[dict]:
    """The newest score per device from latest state: device_id, ts, scored_at, model_version, risk, alert,
    rul_hours, anomaly."""
    q = "SELECT device_id, ts, scored_at, model_version, risk, alert, rul_hours, anomaly FROM scores"
    args, conds = [], []
    if devices is not None:
        conds.append(f"device_id IN ({_marks(devices)})")
        args += list(devices)
    if alert is not None:
        conds.append("alert = ?")
        args.append(int(alert))
    if conds: q += " WHERE " + " AND ".join(conds)
    try: rows = con.execute(q + " ORDER BY device_id", args).fetchall()
    except sqlite3.OperationalError as e:
        if 'no such table' in str(e): return []
        raise
    return [dict(device_id=d, ts=_iso(ts), scored_at=_iso(sa), model_version=v, risk=r, alert=a, rul_hours=rul,
                 anomaly=an)
            for d, ts, sa, v, r, a, rul, an in rows]

def _num(v) -> float|None:
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else float(v)

# -- one loaded bundle -------------------------------------------------------------------------------------------------

try:   # one OpenMP thread per predict: on 2 shared cores, sklearn's thread pool costs more than it saves on a few rows
    from threadpoolctl import ThreadpoolController
    _POOLS = ThreadpoolController()
    def _one_thread(): return _POOLS.limit(limits=1, user_api='openmp')
except ImportError:   # pragma: no cover
    import contextlib
    def _one_thread(): return contextlib.nullcontext()

@dataclass(frozen=True)
class Loaded:
    "A champion bundle loaded and checked: version, folder, the model and what serving needs of it."
    version: str
    path: Path
    model: Any
    spec: FeatureSpec
    features: tuple
    threshold: float|None
    loaded_at: float = field(default_factory=time.time)

    @classmethod
    def load(cls, version:str, path:Path|str, fallback_spec:FeatureSpec|None=None) -> Loaded:
        "Load the bundle at `path` and try it on one row (so a broken bundle fails here, not in a request)."
        m = load_model(path)
        spec = getattr(m, 'feature_spec', None)
        if spec is None:
            spec = fallback_spec or FeatureSpec()
            log.warning("the model bundle has no feature_spec; online features use the params' defaults",
                        extra={'version': version, 'spec': str(spec)})
        try: thr = float(m.threshold)
        except (TypeError, ValueError, AttributeError): thr = None
        c = cls(str(version), Path(path), m, spec, tuple(m.features), thr)
        c.score(pd.DataFrame(np.nan, index=[0], columns=[*c.features, ANOMALY]))   # warm up: raises if it cannot
        return c

    def score(self, X:pd.DataFrame) -> pd.DataFrame:
        "risk, alert, rul_hours, anomaly per row of the feature table `X` (rul/anomaly NaN when the bundle lacks them)."
        m = self.model
        with _one_thread():
            risk = pd.Series(np.asarray(m.predict_proba(X), dtype='float64'), index=X.index)
            if self.threshold is not None: alert = (risk >= self.threshold).astype('int8')
            else: alert = pd.Series(np.asarray(m.predict(X)), index=X.index).astype('int8')
            out = pd.DataFrame({'risk': risk, 'alert': alert, 'rul_hours': np.nan, 'anomaly': np.nan}, index=X.index)
            if ANOMALY in X:   # computed over the device's window (the detector looks back), see Predictor.features
                out['anomaly'] = X[ANOMALY].to_numpy('float64')
            for col, meth in (('rul_hours', 'predict_rul'), ('anomaly', 'anomaly_score')):
                fn = getattr(m, meth, None)
                if fn is None or (col == 'anomaly' and ANOMALY in X): continue
                try: out[col] = np.asarray(fn(X), dtype='float64')
                except Exception as e:   # an optional output: the risk still stands
                    _warn_once(self.version, meth, f"{meth} failed; {col} is left empty", error=repr(e))
        return out

_warned: set = set()

def _warn_once(version:str, what:str, message:str, **extra) -> None:
    "Log `message` once per model `version` and `what` failed (an optional output failing each request must not flood)."
    if (version, what) in _warned: return
    _warned.add((version, what))
    log.warning(message, extra={'version': version, **extra})

ANOMALY = '_anomaly'   # column of a feature row holding the detector's score over the device's window

# -- the champion, hot-reloaded ----------------------------------------------------------------------------------------

class Champion:
    "The registry's champion bundle, reloaded in a background thread when the champion changes."
    def __init__(self, registry,                        # a ModelRegistry (champion(), champion_token())
                 reload_check:float=1.0,                # seconds between checks of champion_token()
                 fallback_spec:FeatureSpec|None=None,   # feature spec for bundles that carry none
                 start:bool=True):                      # start the polling thread
        self.registry, self.reload_check, self.fallback_spec = registry, reload_check, fallback_spec
        self.current: Loaded|None = None
        self.reloads = self.failures = 0
        self._token, self._retry_at, self._lock = object(), math.inf, threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        try: self.check()
        except Exception as e:
            log.error("could not read the model registry",
                      extra={'registry': str(getattr(registry, 'root', registry)), 'error': repr(e)})
        if start: self.start()

    def get(self) -> Loaded:
        "The bundle serving now, or `NoChampion`."
        c = self.current
        if c is None: raise NoChampion()
        return c

    def check(self) -> bool:
        "Reload if the champion changed since the last check (or a failed load is due for a retry); True if it swapped."
        with self._lock:
            token = self.registry.champion_token()
            if token == self._token and time.monotonic() < self._retry_at: return False
            ch = self.registry.champion()           # the token was read first: a promotion in between is seen next time
            if ch is None:
                if self.current is not None:
                    log.warning("the registry has no champion any more; /v1/predict answers 503")
                self.current, self._token, self._retry_at = None, token, math.inf
                return False
            version, path = ch
            if self.current is not None and self.current.version == str(version):
                self._token, self._retry_at = token, math.inf
                return False
            try: new = Loaded.load(version, path, self.fallback_spec)
            except Exception as e:
                self.failures += 1
                self._token, self._retry_at = token, time.monotonic() + 30
                log.error("could not load the new champion; the old one keeps serving (retry in 30 s)",
                          extra={'version': str(version), 'path': str(path),
                                 'serving': self.current and self.current.version, 'error': repr(e)})
                return False
            old, self.current = self.current, new   # the swap: one reference, atomic
            self._token, self._retry_at = token, math.inf
            self.reloads += 1
            log.info("champion loaded",
                     extra={'version': new.version, 'previous': old and old.version, 'path': str(path)})
            return True

    def start(self) -> Champion:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name='champion-reload', daemon=True)
            self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self.reload_check):
            try: self.check()
            except Exception as e: log.error("champion check failed", extra={'error': repr(e)})

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None: self._thread.join(5)

# -- predictions with caches -------------------------------------------------------------------------------------------

_UNKNOWN = ("no readings from device {d!r} in latest state; check the id (iot2ml devices list) "
            "or send its readings first")
_SHORT = ("device {d!r} has {have} of history in latest state; the model's features need {need} "
          "(its feature spec's history: normal window + longest window + 1 intervals); "
          "wait for more readings or warm latest state from the lake (LatestState.warm)")

def _hours(us:int) -> str:
    h = us / 3.6e9
    return f"{h:.0f} h" if h >= 1 else f"{us / 6e7:.0f} min"

def _with_anomaly(f:pd.DataFrame, window:pd.DataFrame, c:Loaded) -> pd.DataFrame:
    "`f` with the detector's score, which needs each device's recent rows (`window`), not only its last; if it has one."
    if getattr(c.model, 'detector', None) is None: return f
    try:
        with _one_thread(): score = c.model.anomaly_score(window).reindex(f.index).to_numpy('float64')
        return f.assign(**{ANOMALY: score})
    except Exception as e:
        _warn_once(c.version, 'anomaly', "anomaly_score failed; anomaly is left empty", error=repr(e))
        return f

def _with_columns(f:pd.DataFrame, c:Loaded) -> pd.DataFrame:
    "`f` with every feature column of the model (the ones online features lack left empty)."
    missing = [x for x in c.features if x not in f.columns]
    if not missing: return f
    _warn_once(c.version, 'columns', "online features lack some model columns (a sensor no device sent?); "
               "they are left empty", missing=missing[:10])
    return f.reindex(columns=list(f.columns) + missing)

class Predictor:
    "Predictions for feature rows or for devices (online features from latest state), cached per device and state."
    def __init__(self, champion:Champion,             # the model that answers
                 state_path:Path|str,                 # latest state's SQLite file
                 bucket:str='1h',                     # latest state's bucket (must be the model's feature interval)
                 max_cache:int=200_000):              # cached devices before the caches are emptied
        self.champion, self.state_path, self.max_cache = champion, Path(state_path), max_cache
        self.look_back = 3      # intervals back from the newest complete one a thin interval may be passed over for
        self.bucket_us = pd.Timedelta(bucket).value // 1000
        self._local = threading.local()
        self._feat: dict = {}   # device -> (key, spec id, feature row (1-row DataFrame) or (status, message))
        self._pred: dict = {}   # device -> (key, version, result dict)
        self._lock = threading.Lock()
        self.served = self.rows_served = self.cache_hits = 0
        ensure_scores_table(self.con())

    def state(self) -> LatestState:
        "This thread's own connection to latest state (WAL: reads never wait for the ingest writer)."
        st = getattr(self._local, 'state', None)
        if st is None: st = self._local.state = LatestState(self.state_path, bucket=f"{self.bucket_us}us")
        return st

    def con(self) -> sqlite3.Connection: return self.state().con

    def keys(self, ids:list[str], c:Loaded|None=None) -> dict[str, int]:
        """Per device the interval to score (epoch us): the newest complete one (before its newest reading's) in
        which at least half of the device's sensors reached the model's coverage; devices with no data are left out.
        Late, out-of-order and clock-skewed readings can leave the last 'complete' interval nearly empty in latest
        state: scoring it would score missing sensors, not the pump."""
        con, b = self.con(), self.bucket_us
        if len(ids) == 1:
            r = con.execute("SELECT ts FROM seen WHERE device_id=?", (ids[0],)).fetchone()
            newest = {ids[0]: r[0]} if r is not None else {}
        else:
            q = f"SELECT device_id, ts FROM seen WHERE device_id IN ({_marks(ids)})"
            newest = dict(con.execute(q, ids).fetchall())
        cap = {d: t - t % b - b for d, t in newest.items()}   # the interval before the newest reading's: complete
        for d in ids:   # buckets without readings (warmed from the lake, complete): their newest bucket
            if d not in cap:
                r = con.execute("SELECT max(ts) FROM buckets WHERE device_id=?", (d,)).fetchone()
                if r[0] is not None: cap[d] = r[0]
        if not cap or c is None: return cap
        need = max(1.0, c.spec.expected * c.spec.min_coverage)
        look = self.look_back * b
        ds = list(cap)
        qs = ','.join('?' * len(ds))
        rows = con.execute(f"""SELECT x.device_id, x.ts FROM (SELECT device_id, ts, count(*) AS k FROM buckets
                                 WHERE device_id IN ({qs}) AND ts >= ? AND n >= ? GROUP BY device_id, ts) AS x
                               WHERE 2 * x.k >= (SELECT count(*) FROM latest l WHERE l.device_id = x.device_id)""",
                           [*ds, min(cap.values()) - look, need]).fetchall()
        best = {}
        for d, t in rows:
            if t <= cap[d] and t >= cap[d] - look and t > best.get(d, -1): best[d] = t
        return {d: best.get(d, t) for d, t in cap.items()}

    def cached(self, ids:list[str], c:Loaded) -> list[dict]|None:
        "The predictions for `ids` if every one is cached for its current state and `c`'s version, else None (cheap)."
        keys = self.keys(ids, c)
        out = []
        for d in ids:
            hit = self._pred.get(d)
            if hit is None or d not in keys or hit[0] != keys[d] or hit[1] != c.version: return None
            out.append(hit[2])
        with self._lock:
            self.served += len(out)
            self.cache_hits += len(out)
        return out

    def _check_bucket(self, c:Loaded):
        if pd.Timedelta(c.spec.every).value // 1000 != self.bucket_us:
            raise NoChampion(f"latest state keeps {_hours(self.bucket_us)} buckets but model {c.version}'s features "
                             f"use {c.spec.every} intervals; set [ingest] bucket = '{c.spec.every}' in iot2ml.toml")

    def features(self, ids:list[str], c:Loaded, keys:dict|None=None) -> dict:
        "Per device its newest feature row (1-row DataFrame) or (404, message) when unknown or short of history."
        self._check_bucket(c)
        keys = self.keys(ids, c) if keys is None else keys
        sid = c.version   # the cache is per model version (an id() can be reused)
        out, todo = {}, []
        for d in ids:
            if d not in keys:
                out[d] = (404, _UNKNOWN.format(d=d))
                continue
            hit = self._feat.get(d)
            if hit is not None and hit[0] == keys[d] and hit[1] == sid: out[d] = hit[2]
            else: todo.append(d)
        if todo:
            out.update(self._new_features(todo, c, keys))
            if len(self._feat) > self.max_cache: self._feat.clear()
            for d in todo:
                if d in keys: self._feat[d] = (keys[d], sid, out[d])
        return out

    def _new_features(self, todo:list[str], c:Loaded, keys:dict) -> dict:
        "Per device of `todo` its feature row computed from latest state, or (404, message)."
        hist = c.spec.history.value // 1000
        out, ok = self._history(todo, keys, hist)
        if not ok: return out
        f = self._feature_rows(ok, c, keys, hist)
        for d, row in f.groupby(level='device_id', sort=False): out[d] = row
        for d in ok:
            if d not in out: out[d] = (404, _SHORT.format(d=d, have='no complete interval', need=_hours(hist)))
        return out

    def _history(self, todo:list[str], keys:dict, hist:int) -> tuple[dict, list]:
        "((404, message) per device of `todo` unknown or with less than `hist` us of history; the other devices)."
        q = f"SELECT device_id, min(ts), max(ts) FROM buckets WHERE device_id IN ({_marks(todo)}) GROUP BY device_id"
        span = {d: (lo, hi) for d, lo, hi in self.con().execute(q, todo)}
        out, ok = {}, []
        for d in todo:
            if d not in span:
                out[d] = (404, _UNKNOWN.format(d=d))
                continue
            have = keys[d] - span[d][0] + self.bucket_us
            if have < hist: out[d] = (404, _SHORT.format(d=d, have=_hours(max(0, have)), need=_hours(hist)))
            else: ok.append(d)
        return out, ok

    def _feature_rows(self, ok:list[str], c:Loaded, keys:dict, hist:int) -> pd.DataFrame:
        "The newest feature row of each device of `ok`, from its own window up to its interval in `keys`."
        start = min(keys[d] for d in ok) - hist
        w = self.state().window(ok, start=pd.Timestamp(start, unit='us', tz='UTC'))
        t = w['ts'].astype('datetime64[us, UTC]').astype('int64').to_numpy()
        last = w['device_id'].map(keys).to_numpy('int64')
        w = w[(t >= last - hist) & (t <= last)]   # each device's own window, up to its newest complete interval
        window = online_features(w, c.spec, last=False)
        f = _with_anomaly(window.groupby(level='device_id', sort=False).tail(1), window, c)
        return _with_columns(f, c)

    def devices(self, ids:list[str], c:Loaded|None=None) -> tuple[list[dict], list[dict]]:
        """(predictions, errors) for devices, from their newest interval in latest state; errors carry status 404 and
        why."""
        c = c or self.champion.get()
        keys = self.keys(ids, c)
        preds, errors, rows, need = {}, [], [], []
        for d in dict.fromkeys(ids):
            hit = self._pred.get(d)
            if hit is not None and d in keys and hit[0] == keys[d] and hit[1] == c.version: preds[d] = hit[2]
            else: need.append(d)
        if need:
            feats = self.features(need, c, keys)
            for d in need:
                v = feats[d]
                if isinstance(v, tuple): errors.append(dict(device_id=d, status=v[0], error=v[1]))
                else: rows.append(v)
        if rows:
            X = pd.concat(rows) if len(rows) > 1 else rows[0]
            s = c.score(X)
            if len(self._pred) > self.max_cache: self._pred.clear()
            for (d, ts), r in zip(X.index, s.itertuples(index=False)):
                res = dict(device_id=d, ts=pd.Timestamp(ts).isoformat(), risk=_num(r.risk), alert=int(r.alert),
                           rul_hours=_num(r.rul_hours),
                           anomaly=_num(r.anomaly), model_version=c.version)
                preds[d] = res
                self._pred[d] = (keys[d], c.version, res)
        out = [preds[d] for d in dict.fromkeys(ids) if d in preds]
        with self._lock: self.served += len(out)
        return out, errors

    def rows(self, records:list[dict], c:Loaded|None=None) -> list[dict]:
        """Predictions for feature rows (each a dict of feature columns, optionally device_id and ts); `BadRows`
        names what is wrong."""
        c = c or self.champion.get()
        df = pd.DataFrame.from_records(records)
        missing = [x for x in c.features if x not in df.columns]
        if missing:
            raise BadRows(f"the rows lack {len(missing)} of model {c.version}'s {len(c.features)} feature columns: "
                          f"{', '.join(missing[:20])}{' ...' if len(missing) > 20 else ''}; "
                          "send every column the model card lists under 'features' (null for unknown)")
        bad = []
        for col in c.features:
            if not (pd.api.types.is_numeric_dtype(df[col]) or pd.api.types.is_bool_dtype(df[col])):   # strings, mixed
                conv = pd.to_numeric(df[col], errors='coerce')
                if (conv.isna() & df[col].notna()).any(): bad.append(col)
                else: df[col] = conv.astype('float64')
        if bad:
            raise BadRows(f"feature columns {', '.join(bad[:20])} hold values that are not numbers; "
                          "send numbers or null")
        s = c.score(df)
        dev = df['device_id'] if 'device_id' in df else pd.Series(None, index=df.index, dtype=object)
        ts = df['ts'] if 'ts' in df else pd.Series(None, index=df.index, dtype=object)
        out = [dict(device_id=None if d is None or d != d else str(d), ts=None if t is None or t != t else str(t),
                    risk=_num(r.risk),
                    alert=int(r.alert), rul_hours=_num(r.rul_hours), anomaly=_num(r.anomaly), model_version=c.version)
               for d, t, r in zip(dev, ts, s.itertuples(index=False))]
        with self._lock:
            self.served += len(out)
            self.rows_served += len(out)
        return out

# -- streaming scoring -------------------------------------------------------------------------------------------------

def _note_scores(lake:Lake, dataset:str, table:pa.Table, files:int) -> None:
    "Add a pass's rows, files and time range to the lake catalog (no directory listing, as `Lake.land` does)."
    from iot2ml.lake.store import catalog_entry
    with lake._catalog_lock() as cat:
        e = catalog_entry(cat, 'raw', dataset, SCORES_SCHEMA, 'iot2ml.serve.scoring.Scorer')
        if not e.get('description'):
            e.update(description='Champion model scores of the live stream: one row per device and scoring pass '
                                 '(risk, alert, RUL, anomaly, model version).',
                     tags=['scores', 'derived'])
        e['rows'] += table.num_rows
        e['files'] += files
        lo, hi = (v.as_py().isoformat() for v in pc.min_max(table.column('ts')).values())
        e['start'] = min(filter(None, [e['start'], lo]))
        e['end'] = max(filter(None, [e['end'], hi]))

class _Fixed:
    "A stand-in for `Champion` in the scoring worker: always the one bundle it was handed."
    def __init__(self, c:Loaded): self.current = c
    def get(self) -> Loaded: return self.current

_worker: dict = {}   # in the scoring worker process: (state path, bucket) -> Predictor, version -> Loaded

def _worker_init(nice:int) -> None:
    "The scoring worker starts below the server's priority, so ingestion gets the CPU first when both want it."
    try: os.nice(nice)
    except (OSError, AttributeError): pass
    try:   # Linux: end with the server, even when it is killed without closing the pool
        import ctypes, signal
        ctypes.CDLL(None).prctl(1, int(signal.SIGTERM))   # PR_SET_PDEATHSIG
    except (OSError, AttributeError): pass

def _worker_devices(state_path:str, bucket_us:int, version:str, path:str, fallback_spec,
                    ids:list[str]) -> tuple[list[dict], list[dict]]:
    """(predictions, errors) for `ids` with the bundle `version` at `path`, computed in the scoring worker (its own
    caches)."""
    c = _worker.get(('model', version))
    if c is None:
        for k in [k for k in _worker if k[0] == 'model']: del _worker[k]
        c = _worker[('model', version)] = Loaded.load(version, path, fallback_spec)
    p = _worker.get(('state', state_path, bucket_us))
    if p is None:
        p = _worker[('state', state_path, bucket_us)] = Predictor(_Fixed(c), state_path, bucket=f"{bucket_us}us")
    p.champion = _Fixed(c)
    return p.devices(ids, c)

class Scorer:
    """Scores the devices heard from in one batch every `interval` seconds (a background thread): lake dataset +
    latest state."""
    def __init__(self, predictor:Predictor,           # the champion and its feature cache
                 lake:Lake,                           # where the scores dataset goes (raw tier)
                 dataset:str='scores',                # the dataset name
                 interval:float=5.0,                  # seconds between passes
                 writer_id:str='ingest-0',            # names the files, so several ingesters never collide
                 chunk:int=500,                       # devices per feature batch
                 max_wait:int=3,                      # passes a device waits for latest state to hold its newest
                 process:bool=True,                   # features and scores in a worker process (else in this thread)
                 nice:int=10):                        # the worker's niceness: ingestion first
        self.predictor, self.lake, self.dataset, self.interval = predictor, lake, dataset, interval
        self.writer_id, self.chunk, self.max_wait, self.process, self.nice = writer_id, chunk, max_wait, process, nice
        self._pool = None
        self._dirty: dict[str, int] = {}
        self._waits: dict[str, int] = {}
        self._marks: list[pa.Table] = []
        self._last: dict[str, tuple] = {}   # device -> (interval, version) of the last score written
        self._lock, self._pass_lock = threading.Lock(), threading.Lock()
        self._stop, self._thread = threading.Event(), None
        self.passes = self.scored = self.errors = self.rows_written = 0
        self.skipped: dict[str, int] = {}
        self.last_pass_seconds = 0.0
        self.last_version = None

    def mark(self, table:pa.Table) -> None:
        """The ingest hook ('score' destination): keep the device ids and times of `table` for the next pass. Cheap:
        it runs for every batch in the ingestion path, so the grouping per device waits for the pass (`_fold`), once
        over all batches."""
        if not table.num_rows: return
        with self._lock: self._marks.append(table.select(['device_id', 'ts']))

    def _requeue(self, dirty:dict) -> None:
        "Put devices back for the next pass (keeping the newer time where one was marked since)."
        with self._lock:
            for d, t in dirty.items():
                if t > self._dirty.get(d, -1): self._dirty[d] = t

    def _fold(self) -> None:
        "Fold the marked batches into `_dirty` (device -> newest reading time, epoch us)."
        with self._lock: marks, self._marks = self._marks, []
        if not marks: return
        t = pa.concat_tables(marks, promote_options='default')
        g = t.group_by('device_id').aggregate([('ts', 'max')])
        ids, mx = g.column('device_id').to_pylist(), pc.cast(g.column('ts_max'), pa.int64()).to_pylist()
        with self._lock:
            d = self._dirty
            for i, x in zip(ids, mx):
                if x > d.get(i, -1): d[i] = x

    @property
    def pending(self) -> int:
        "Devices waiting for the next pass."
        self._fold()
        return len(self._dirty)

    def _ensure_pool(self) -> None:
        """The worker process; started with the scorer (spawning it under load, at the first pass, cost ingestion a
        third)."""
        if self._pool is None:
            import concurrent.futures, multiprocessing
            self._pool = concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context('spawn'),
                                                                initializer=_worker_init, initargs=(self.nice,))
            self._pool.submit(os.getpid)    # spawn and import now, not during the first pass

    def start(self) -> Scorer:
        if self.process:
            try: self._ensure_pool()
            except Exception as e:
                log.error("the scoring worker process could not start; scoring runs in the server process",
                          extra={'error': repr(e)})
                self.process = False
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name='scorer', daemon=True)
            self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self.interval):
            try: self.run_once()
            except Exception as e:
                self.errors += 1
                log.exception("scoring pass failed", extra={'error': repr(e)})

    def close(self) -> None:
        "Stop the thread after a last pass over what is marked."
        self._stop.set()
        if self._thread is not None: self._thread.join(60)
        try: self.run_once(force=True)
        except Exception as e: log.error("last scoring pass failed", extra={'error': repr(e)})
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _skip(self, reason:str, n:int=1):
        self.skipped[reason] = self.skipped.get(reason, 0) + n

    def run_once(self, force:bool=False) -> int:
        """One pass: score the marked devices whose readings latest state holds; returns the scores written. A
        device's score is written when its newest complete interval or the model version changed since its last one."""
        with self._pass_lock:
            t0 = time.perf_counter()
            self._fold()
            with self._lock: dirty, self._dirty = self._dirty, {}
            if not dirty: return 0
            c = self.predictor.champion.current
            if c is None:   # keep them marked: a champion promoted later scores their newest interval
                self._skip('no_champion', len(dirty))
                self._requeue(dirty)
                return 0
            try:
                ready = self._ready(dirty, force)
                preds = []
                for i in range(0, len(ready), self.chunk):
                    p, errs = self._devices(ready[i:i + self.chunk], c)
                    preds += p
                    for e in errs: self._skip('unknown_device' if 'no readings' in e['error'] else 'not_enough_history')
                new = [p for p in preds if self._last.get(p['device_id']) != (p['ts'], p['model_version'])]
                if len(new) < len(preds): self._skip('unchanged', len(preds) - len(new))
                preds = new
                if preds:
                    self._write(preds)
                    for p in preds: self._last[p['device_id']] = (p['ts'], p['model_version'])
            except Exception:   # a failed pass (lake write, worker): its devices wait for the next, not new readings
                self._requeue(dirty)
                raise
            self.passes += 1
            self.scored += len(preds)
            self.last_version = c.version
            self.last_pass_seconds = time.perf_counter() - t0
            return len(preds)

    def _devices(self, ids:list[str], c:Loaded) -> tuple[list[dict], list[dict]]:
        """(predictions, errors) for `ids`: in the worker process (its results fill the predictor's cache too, so
        /v1/predict answers them without recomputing), or in this thread when `process` is off or the worker cannot
        start."""
        if not self.process: return self.predictor.devices(ids, c)
        self._ensure_pool()
        pr = self.predictor
        try:
            preds, errs = self._pool.submit(_worker_devices, str(pr.state_path), pr.bucket_us, c.version, str(c.path),
                                            getattr(pr.champion, "fallback_spec", None), ids).result()
        except Exception as e:   # a worker that died (memory, a signal) or could not start: this thread from now on
            log.error("the scoring worker process failed; scoring goes on in the server process",
                      extra={'error': repr(e)})
            self.process = False
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
            return pr.devices(ids, c)
        if len(pr._pred) > pr.max_cache: pr._pred.clear()
        for p in preds: pr._pred[p['device_id']] = (pd.Timestamp(p['ts']).value // 1000, c.version, p)
        return preds, errs

    def _ready(self, dirty:dict, force:bool) -> list[str]:
        """The devices for which latest state already holds a reading of the interval of their newest marked one (so
        the newest complete interval it shows is the one the marks imply), or that waited `max_wait` passes; the rest
        wait. Under a steady stream the newest marked reading is always a little ahead of latest state: waiting for
        it exactly would defer every device."""
        ids = list(dirty)
        con = self.predictor.con()
        seen = {}
        b = self.predictor.bucket_us
        for i in range(0, len(ids), 5000):
            part = ids[i:i + 5000]
            q = f"SELECT device_id, ts FROM seen WHERE device_id IN ({_marks(part)})"
            seen.update(con.execute(q, part).fetchall())
        ready, later = [], {}
        for d, t in dirty.items():
            if force or seen.get(d, -1) >= t - t % b or self._waits.get(d, 0) >= self.max_wait:
                ready.append(d)
                self._waits.pop(d, None)
            else:
                later[d] = t
                self._waits[d] = self._waits.get(d, 0) + 1
        if later:
            with self._lock:
                for d, t in later.items():
                    if t > self._dirty.get(d, -1): self._dirty[d] = t
        return ready

    def _write(self, preds:list[dict]) -> None:
        """The pass's scores: one atomic Parquet file per event date in the lake, and the newest per device in latest
        state."""
        now = pd.Timestamp.now(tz='UTC')
        df = pd.DataFrame(preds)
        df = pd.DataFrame({'device_id': df['device_id'], 'ts': pd.to_datetime(df['ts'], utc=True), 'scored_at': now,
                           'model_version': df['model_version'], 'risk': df['risk'].astype('float64'),
                           'alert': df['alert'].astype('int8'),
                           'rul_hours': df['rul_hours'].astype('float64'), 'anomaly': df['anomaly'].astype('float64')})
        t = pa.Table.from_pandas(df, schema=SCORES_SCHEMA, preserve_index=False)
        name = f"{self.writer_id}-{now.strftime('%Y%m%dT%H%M%S%f')}.parquet"
        parts = split_by_date(t.sort_by('ts'))
        for day, part in parts.items():
            self.lake.write_parquet(part, self.lake.path('raw', self.dataset)/f'date={day}'/name)
        _note_scores(self.lake, self.dataset, t, len(parts))
        us = lambda s: s.astype('datetime64[us, UTC]').astype('int64')
        rows = list(zip(df['device_id'], us(df['ts']).tolist(), us(df['scored_at']).tolist(), df['model_version'],
                        df['risk'].tolist(), df['alert'].astype(int).tolist(), df['rul_hours'].tolist(),
                        df['anomaly'].tolist()))
        rows = [tuple(None if isinstance(v, float) and v != v else v for v in r) for r in rows]
        con = self.predictor.con()
        con.execute('BEGIN IMMEDIATE')
        con.executemany(_UPSERT_SCORE, rows)
        con.execute('COMMIT')
        self.rows_written += len(rows)
