"""Live fleet: stream simulated pumps in real time over MQTT or HTTP (`iot2ml simulate --live`), for demos and load tests.

Hand-written (a paced publishing loop). Each tick, every device sends one wide message with its seven
sensors at the wall-clock time, from the simulator's own physics (demand cycle, VFD speed, pump and system
curves, efficiency, motor) with noise; no faults. MQTT: each device's message goes to its own topic with QoS 1
over one connection whose account may publish for every device (a gateway with the devices behind it), at most
`window` messages unacknowledged; HTTP: one batch per tick with an admin or gateway token. Bounded: it stops after
`--seconds` (or Ctrl-C) and reports what was sent and acknowledged.
"""
from __future__ import annotations
import json, math, socket, struct, threading, time
from dataclasses import dataclass
import numpy as np, orjson, pandas as pd

from iot2ml.sim.fleet import FleetSpec, SENSORS, UNITS, fleet_assets, demand_profile, speed_for, operating_point, efficiency, motor, hydraulic_kw, device_ids

__all__ = ['LiveFleet', 'RawPublisher', 'run_mqtt', 'run_http', 'replay_batches', 'run_replay_http']

class LiveFleet:
    "Vectorised per-tick readings for `pumps` simulated pumps (the same fleet as `FleetSpec(pumps, seed)`)."
    def __init__(self, pumps:int, seed:int=42):
        self.spec = FleetSpec(pumps=pumps, days=1, seed=seed)
        self.a = fleet_assets(self.spec); self.ids = device_ids(pumps); self.rng = np.random.default_rng(seed + 1)

    def tick(self, t:pd.Timestamp|None=None) -> list[dict]:
        "One wide reading per device at time `t` (default: now, UTC)."
        t = pd.Timestamp.now(tz='UTC') if t is None else t
        a, n, rng = self.a, len(self.ids), self.rng
        hour = t.hour + t.minute/60 + t.second/3600 + a['phase'][a['site']]
        d = demand_profile(hour % 24, t.dayofweek >= 5) * a['base'] * rng.normal(1, 0.02, n)
        q_want = np.clip(d, 0.2, 1.1) * a['qr']
        s = np.clip(speed_for(q_want, a['h0'], a['k'], a['static'], a['r']), 0.5, 1.05)
        q, h = operating_point(s, a['h0'], a['k'], a['static'], a['r'])
        eta = efficiency(q, s, a['qr'], a['eta'])
        p, i = motor(hydraulic_kw(q, h) / eta, a['p_rated'])
        suction = (a['level'][a['site']] - a['ks'] * q * q) / 10.197
        vals = {'suction_pressure': suction + rng.normal(0, 0.005, n), 'discharge_pressure': suction + h / 10.197 + rng.normal(0, 0.01, n),
                'flow': q + rng.normal(0, 0.01, n) * a['qr'], 'motor_current': i * rng.normal(1, 0.01, n), 'power': p * rng.normal(1, 0.01, n),
                'vibration_rms': a['v0'] * (1 + 2 * (q / (s * a['qr']) - 1) ** 2) * rng.normal(1, 0.05, n),
                'bearing_temp': 18 + 25 * p / a['p_rated'] + rng.normal(0, 0.3, n)}
        ts = t.isoformat().replace('+00:00', 'Z')
        cols = {k: np.round(v, 3).tolist() for k, v in vals.items()}
        return [{'device_id': dev, 'ts': ts, **{k: cols[k][j] for k in SENSORS}} for j, dev in enumerate(self.ids)]

@dataclass
class Sent:
    "What a live run did."
    messages: int = 0; readings: int = 0; acked: int = 0; errors: int = 0; seconds: float = 0.0
    def __str__(self):
        return (f"sent {self.messages:,} messages ({self.readings:,} readings) in {self.seconds:.1f} s, "
                f"{self.acked:,} acknowledged, {self.errors:,} errors")

def _pace(rate:float, seconds:float, fn) -> float:
    "Call `fn()` `rate` times a second for `seconds` (or until KeyboardInterrupt); returns the time taken."
    t0 = time.monotonic(); k = 0
    try:
        while time.monotonic() - t0 < seconds:
            fn(); k += 1
            wait = t0 + k / rate - time.monotonic()
            if wait > 0: time.sleep(wait)
    except KeyboardInterrupt: pass
    return time.monotonic() - t0

# A minimal MQTT 5 QoS 1 publisher: paho sends one message per call and handles each PUBACK in Python, which caps a
# publisher near 20k msg/s on this machine (PERF-NOTES); this one writes hundreds of PUBLISH packets per send.
def _varint(n):
    out = bytearray()
    while True:
        b, n = n & 127, n >> 7
        out.append(b | 128 if n else b)
        if not n: return bytes(out)

def _s(x): x = x.encode() if isinstance(x, str) else x; return struct.pack('>H', len(x)) + x

class RawPublisher:
    "MQTT 5 QoS 1 publisher on a raw socket: keeps at most `window` PUBLISHes unacknowledged."
    def __init__(self, host, port, user, password, client_id, window):
        self.sock = socket.create_connection((host, port)); self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        body = _s('MQTT') + bytes((5, 0x80 | 0x40 | 0x02)) + struct.pack('>H', 60) + b'\x00' + _s(client_id) + _s(user) + _s(password)
        self.sock.sendall(b'\x10' + _varint(len(body)) + body)
        ack = self.sock.recv(4096)
        if ack[0] != 0x20 or ack[3] >= 0x80: raise RuntimeError(f"publisher refused: {ack!r}")
        self.window, self.inflight, self.acked, self.pid, self.buf = window, 0, 0, 0, b''

    def _read_acks(self, block):
        self.sock.setblocking(block)
        try: data = self.sock.recv(1 << 20)
        except BlockingIOError: return
        finally: self.sock.setblocking(True)
        if not data: raise ConnectionError("broker closed the publisher's connection")
        b = self.buf + data; i, n, k = 0, len(b), 0
        while n - i >= 2:
            rl = b[i + 1]
            if rl & 128: raise RuntimeError("unexpected large packet")
            if i + 2 + rl > n: break
            if b[i] >> 4 == 4:
                k += 1
                if rl > 2 and b[i + 4] >= 0x80: raise RuntimeError(f"broker refused a publish: reason 0x{b[i + 4]:02x}")
            i += 2 + rl
        self.buf = b[i:]; self.inflight -= k; self.acked += k

    def publish_many(self, topics_payloads, wait=True):
        "Publish (topic, payload) pairs; returns when the broker acknowledged all of them (`wait`) or when they are sent."
        out = []
        for topic, pl in topics_payloads:
            while self.inflight >= self.window:
                if out: self.sock.sendall(b''.join(out)); out = []
                self._read_acks(True)
            self.pid = self.pid % 65535 + 1
            body = _s(topic) + struct.pack('>H', self.pid) + b'\x00' + pl
            out.append(b'\x32' + _varint(len(body)) + body); self.inflight += 1
            if len(out) >= 256: self.sock.sendall(b''.join(out)); out = []; self._read_acks(False)
        if out: self.sock.sendall(b''.join(out))
        if not wait: self._read_acks(False); return
        while self.inflight: self._read_acks(True)

    def close(self):
        try: self.sock.sendall(b'\xe0\x00')
        except OSError: pass
        self.sock.close()

def run_mqtt(fleet:LiveFleet, host:str, port:int, username:str|None, password:str|None, rate:float, seconds:float,
             window:int=20_000) -> Sent:
    "Publish each device's reading on iot2ml/<id>/telemetry at `rate` ticks per second, QoS 1, for `seconds`."
    out = Sent(); topics = [f"iot2ml/{d}/telemetry" for d in fleet.ids]
    pub = RawPublisher(host, port, username or '', password or '', f"iot2ml-live-{time.time_ns()}", window)
    def send():
        msgs = [(t, orjson.dumps(r)) for t, r in zip(topics, fleet.tick())]
        pub.publish_many(msgs, wait=False)
        out.messages += len(msgs); out.readings += len(msgs) * len(SENSORS)
    out.seconds = _pace(rate, seconds, send)
    try:
        while pub.inflight: pub._read_acks(True)
    finally:
        out.acked = pub.acked; pub.close()
    return out

def run_http(fleet:LiveFleet, url:str, token:str, rate:float, seconds:float) -> Sent:
    "POST every tick's readings as one batch to `url`/v1/readings at `rate` ticks per second for `seconds`."
    import httpx
    out = Sent()
    with httpx.Client(base_url=url, headers={'Authorization': f'Bearer {token}'}, timeout=30) as c:
        def send():
            batch = fleet.tick()
            r = c.post('/v1/readings', content=orjson.dumps(batch), headers={'content-type': 'application/json'})
            out.messages += 1; out.readings += len(batch) * len(SENSORS)
            if r.status_code == 200: out.acked += 1
            else: out.errors += 1
        out.seconds = _pace(rate, seconds, send)
    return out

# -- replay: the simulated fleet's own history, continued after the lake's end, at a chosen speed ---------------------------
# The live ticks above are healthy pumps at wall-clock time: good for load, useless for a model that needs a week of a
# pump's past. `run_replay_http` streams the simulator's readings for the days after the lake's end (the same pumps by
# seed, with their faults, dropouts, duplicates and late data) in arrival order, `speed` simulated seconds per real
# second, so latest state continues the lake's history and the champion scores a stream that can fail.

def replay_batches(spec:FleetSpec, speed:float, step:float=1.0):
    "Yield (simulated time, NDJSON body) of the readings that arrive in each `step` real seconds, in arrival order."
    from iot2ml.sim.fleet import iter_batches
    for _, t in iter_batches(spec):
        t = t.sort_by('arrival_ts')
        arr = t.column('arrival_ts').cast('int64').to_numpy()
        if not len(arr): continue
        edges = np.arange(arr[0], arr[-1] + 1, int(speed * step * 1e6))
        cut = np.searchsorted(arr, edges[1:], side='left')
        ts = pd.to_datetime(t.column('ts').cast('int64').to_numpy(), unit='us', utc=True).strftime('%Y-%m-%dT%H:%M:%SZ')
        dev, sen, val = t.column('device_id').to_pylist(), t.column('sensor').to_pylist(), t.column('value').to_numpy()
        for a, b in zip(np.r_[0, cut], np.r_[cut, len(arr)]):
            if b <= a: continue
            body = b'\n'.join(orjson.dumps({'device_id': dev[i], 'ts': ts[i], 'sensor': sen[i], 'value': None if np.isnan(val[i]) else float(val[i])})
                              for i in range(a, b))
            yield pd.Timestamp(int(arr[b - 1]), unit='us', tz='UTC'), body

def run_replay_http(spec:FleetSpec, url:str, token:str, speed:float, seconds:float, on_tick=None) -> Sent:
    "POST the replayed readings (NDJSON) to `url`/v1/readings, one body per real second, for at most `seconds`."
    import httpx
    out = Sent(); it = replay_batches(spec, speed)
    with httpx.Client(base_url=url, headers={'Authorization': f'Bearer {token}', 'content-type': 'application/x-ndjson'}, timeout=60) as c:
        def send():
            try: sim_t, body = next(it)
            except StopIteration: raise KeyboardInterrupt from None     # the replayed days are over
            r = c.post('/v1/readings', content=body)
            n = body.count(b'\n') + 1
            out.messages += 1; out.readings += n
            if r.status_code == 200: out.acked += 1
            else: out.errors += 1
            if on_tick is not None: on_tick(sim_t, out)
        out.seconds = _pace(1.0, seconds, send)
    return out

# -- the live part of `iot2ml demo`: the champion scoring the replayed stream -----------------------------------------------

def _free_port() -> int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def live_demo(settings, spec:FleetSpec, hours:float=24, speed:float=3600, echo=print) -> dict:
    """Start `iot2ml serve` with streaming scoring on a free loopback port, warm its latest state from the lake, replay
    `hours` of the fleet's next days at `speed`, then show the champion's newest scores and one /v1/predict answer.
    The live readings and scores land in state/demo-live (not in the DVC-versioned lake, which stays as snapshotted)."""
    import os, shutil, subprocess, sys
    from pathlib import Path
    import httpx
    from iot2ml.config import Params
    from iot2ml.ml.features import FeatureSpec
    from iot2ml.lake.store import Lake
    from iot2ml.ingest.devices import Registry
    from iot2ml.ingest.state import LatestState
    s = settings; state_dir = s.path('state_dir'); live_dir = state_dir/'demo-live'
    shutil.rmtree(live_dir, ignore_errors=True)
    for f in state_dir.glob('latest.sqlite*'): f.unlink()                  # a fresh window: the replay is the same each run
    for d in (state_dir/'spool', state_dir/'deadletter'): shutil.rmtree(d, ignore_errors=True)
    end = pd.Timestamp(spec.start, tz='UTC') + pd.Timedelta(days=spec.days)
    from iot2ml.ml.registry import ModelRegistry
    from iot2ml.ml.models import load_model
    champ = ModelRegistry.from_settings(s).champion()
    fs = getattr(load_model(champ[1]), 'feature_spec', None) if champ else None
    if fs is None:
        p = Params().features; fs = FeatureSpec(windows=p.windows, normal_window=p.normal_window, lags=p.lags)
    history = fs.history                                                  # what the champion's features look back over
    lake = Lake.from_settings(s)
    agg = lake.aggregate('telemetry', every=f"{int(pd.Timedelta(s.ingest.bucket).total_seconds())} seconds", start=end - history - pd.Timedelta(s.ingest.bucket))
    st = LatestState(state_dir/'latest.sqlite', bucket=s.ingest.bucket, window=s.ingest.window); n = st.warm(agg); st.con.close()
    echo(f"Warmed latest state with {n:,} hourly buckets of the lake's last {history.days} days (the features' history).")
    reg = Registry.from_settings(s, create=True)
    try: token = reg.add_admin('demo-live', '1d').token
    except Exception: token = reg.rotate('demo-live').token                # a demo run before: a new token for this one
    port = _free_port(); url = f"http://127.0.0.1:{port}"
    env = os.environ | {'IOT2ML_SCORING__ENABLED': 'true', 'IOT2ML_SCORING__INTERVAL': '2', 'IOT2ML_DATA_DIR': str(live_dir)}
    cmd = [str(Path(sys.executable).parent/'iot2ml'), 'serve', '--port', str(port), '--log-level', 'warning']
    log_file = open(state_dir/'demo-serve.log', 'w')
    proc = subprocess.Popen(cmd, cwd=s.path('root'), env=env, stdout=subprocess.DEVNULL, stderr=log_file)
    c = httpx.Client(base_url=url, headers={'Authorization': f'Bearer {token}'}, timeout=30)
    try:
        t0 = time.monotonic()
        while True:
            try:
                if c.get('/healthz').status_code == 200: break
            except httpx.TransportError: pass
            if proc.poll() is not None or time.monotonic() - t0 > 60:
                raise RuntimeError(f"iot2ml serve did not start; see {state_dir/'demo-serve.log'}")
            time.sleep(0.2)
        echo(f"Serving on {url} with streaming scoring; replaying {hours:g} h of the fleet after {end:%Y-%m-%d} at {speed:g}x ...")
        nxt = FleetSpec(**{**spec.__dict__, 'start': end.strftime('%Y-%m-%d'), 'days': max(1, math.ceil(hours / 24))})
        last = [0.0]
        def tick(sim_t, sent):
            if time.monotonic() - last[0] >= 5: last[0] = time.monotonic(); echo(f"  stream at {sim_t:%Y-%m-%d %H:%M}: {sent.readings:,} readings sent, {sent.errors} errors")
        sent = run_replay_http(nxt, url, token, speed, hours * 3600 / speed, on_tick=tick)
        echo(f"Replay done: {sent}.")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:                                   # let the scorer finish its pass
            scores = c.get('/v1/scores').json()
            rows = scores if isinstance(scores, list) else scores.get('scores', [])
            if rows and max(r['ts'] for r in rows) >= (end + pd.Timedelta(hours=hours) - pd.Timedelta('3h')).isoformat(): break
            time.sleep(1)
        df = pd.DataFrame(rows)
        if df.empty: raise RuntimeError(f"no scores from the live stream; see {state_dir/'demo-serve.log'}")
        top = df.sort_values('risk', ascending=False).head(8)
        echo(f"\nChampion {df['model_version'].iloc[0]} scores of the live stream, riskiest first (of {len(df)} pumps):")
        echo(top[['device_id', 'ts', 'risk', 'alert', 'rul_hours', 'anomaly']].round(3).to_string(index=False))
        pr = c.post('/v1/predict', json={'devices': [top['device_id'].iloc[0]]})
        echo(f"\nPOST /v1/predict {{\"devices\": [\"{top['device_id'].iloc[0]}\"]}} -> {pr.status_code} {pr.text[:300]}")
        return dict(url=url, sent=sent, scored=len(df), alerts=int(df['alert'].sum()), version=df['model_version'].iloc[0])
    finally:
        c.close(); proc.terminate()
        try: proc.wait(20)
        except subprocess.TimeoutExpired: proc.kill(); proc.wait()
        log_file.close()
