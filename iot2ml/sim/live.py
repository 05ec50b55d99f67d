"""Live fleet: stream simulated pumps in real time over MQTT or HTTP (`iot2ml stream`), for demos and load tests.

Hand-written (a paced publishing loop). Each tick, every device sends one wide message with its seven
sensors at the wall-clock time, from the simulator's own physics (demand cycle, VFD speed, pump and system
curves, efficiency, motor) with noise; no faults. MQTT: each device's message goes to its own topic with QoS 1
over one connection whose account may publish for every device (a gateway with the devices behind it), at most
`window` messages unacknowledged; HTTP: one batch per tick with an admin or gateway token. Bounded: it stops after
`--seconds` (or Ctrl-C) and reports what was sent and acknowledged. `replay_batches` and `run_replay_http` stream the
fleet's own history after the lake's end instead (the live part of `iot2ml demo`, in `iot2ml.cli.live`).
"""
from __future__ import annotations
import socket, struct, time
from dataclasses import dataclass
import numpy as np, orjson, pandas as pd

from iot2ml.sim.fleet import (FleetSpec, SENSORS, fleet_assets, demand_profile, speed_for, operating_point, efficiency,
                              motor, hydraulic_kw, device_ids)

__all__ = ['LiveFleet', 'RawPublisher', 'run_mqtt', 'run_http', 'replay_batches', 'run_replay_http']

class LiveFleet:
    "Vectorised per-tick readings for `pumps` simulated pumps (the same fleet as `FleetSpec(pumps, seed)`)."
    def __init__(self, pumps:int, seed:int=42):
        self.spec = FleetSpec(pumps=pumps, days=1, seed=seed)
        self.a = fleet_assets(self.spec)
        self.ids = device_ids(pumps)
        self.rng = np.random.default_rng(seed + 1)

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
        vals = {'suction_pressure': suction + rng.normal(0, 0.005, n),
                'discharge_pressure': suction + h / 10.197 + rng.normal(0, 0.01, n),
                'flow': q + rng.normal(0, 0.01, n) * a['qr'],
                'motor_current': i * rng.normal(1, 0.01, n),
                'power': p * rng.normal(1, 0.01, n),
                'vibration_rms': a['v0'] * (1 + 2 * (q / (s * a['qr']) - 1) ** 2) * rng.normal(1, 0.05, n),
                'bearing_temp': 18 + 25 * p / a['p_rated'] + rng.normal(0, 0.3, n)}
        ts = t.isoformat().replace('+00:00', 'Z')
        cols = {k: np.round(v, 3).tolist() for k, v in vals.items()}
        return [{'device_id': dev, 'ts': ts, **{k: cols[k][j] for k in SENSORS}} for j, dev in enumerate(self.ids)]

@dataclass
class Sent:
    "What a live run did."
    messages: int = 0
    readings: int = 0
    acked: int = 0
    errors: int = 0
    seconds: float = 0.0

    def __str__(self):
        return (f"sent {self.messages:,} messages ({self.readings:,} readings) in {self.seconds:.1f} s, "
                f"{self.acked:,} acknowledged, {self.errors:,} errors")

def _pace(rate:float, seconds:float, fn) -> float:
    "Call `fn()` `rate` times a second for `seconds` (or until KeyboardInterrupt); returns the time taken."
    t0, k = time.monotonic(), 0
    try:
        while time.monotonic() - t0 < seconds:
            fn()
            k += 1
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

def _s(x):
    x = x.encode() if isinstance(x, str) else x
    return struct.pack('>H', len(x)) + x

class RawPublisher:
    "MQTT 5 QoS 1 publisher on a raw socket: keeps at most `window` PUBLISHes unacknowledged."
    def __init__(self, host, port, user, password, client_id, window):
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        head = _s('MQTT') + bytes((5, 0x80 | 0x40 | 0x02)) + struct.pack('>H', 60) + b'\x00'
        body = head + _s(client_id) + _s(user) + _s(password)
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
        b = self.buf + data
        i, n, k = 0, len(b), 0
        while n - i >= 2:
            rl = b[i + 1]
            if rl & 128: raise RuntimeError("unexpected large packet")
            if i + 2 + rl > n: break
            if b[i] >> 4 == 4:
                k += 1
                if rl > 2 and b[i + 4] >= 0x80: raise RuntimeError(f"broker refused a publish: reason 0x{b[i + 4]:02x}")
            i += 2 + rl
        self.buf = b[i:]
        self.inflight -= k
        self.acked += k

    def publish_many(self, topics_payloads, wait=True):
        "Publish (topic, payload) pairs; returns when the broker acknowledged them all (`wait`) or when they are sent."
        out = []
        for topic, pl in topics_payloads:
            while self.inflight >= self.window:
                out = self._send(out)
                self._read_acks(True)
            self.pid = self.pid % 65535 + 1
            body = _s(topic) + struct.pack('>H', self.pid) + b'\x00' + pl
            out.append(b'\x32' + _varint(len(body)) + body)
            self.inflight += 1
            if len(out) >= 256:
                out = self._send(out)
                self._read_acks(False)
        self._send(out)
        if not wait: return self._read_acks(False)
        while self.inflight: self._read_acks(True)

    def _send(self, packets:list) -> list:
        "Send the `packets` at once (if any); an empty list for the next ones."
        if packets: self.sock.sendall(b''.join(packets))
        return []

    def close(self):
        try: self.sock.sendall(b'\xe0\x00')
        except OSError: pass
        self.sock.close()

def run_mqtt(fleet:LiveFleet, host:str, port:int, username:str|None, password:str|None, rate:float, seconds:float,
             window:int=20_000) -> Sent:
    "Publish each device's reading on iot2ml/<id>/telemetry at `rate` ticks per second, QoS 1, for `seconds`."
    out, topics = Sent(), [f"iot2ml/{d}/telemetry" for d in fleet.ids]
    pub = RawPublisher(host, port, username or '', password or '', f"iot2ml-live-{time.time_ns()}", window)
    def send():
        msgs = [(t, orjson.dumps(r)) for t, r in zip(topics, fleet.tick())]
        pub.publish_many(msgs, wait=False)
        out.messages += len(msgs)
        out.readings += len(msgs) * len(SENSORS)
    out.seconds = _pace(rate, seconds, send)
    try:
        while pub.inflight: pub._read_acks(True)
    finally:
        out.acked = pub.acked
        pub.close()
    return out

def run_http(fleet:LiveFleet, url:str, token:str, rate:float, seconds:float) -> Sent:
    "POST every tick's readings as one batch to `url`/v1/readings at `rate` ticks per second for `seconds`."
    import httpx
    out = Sent()
    with httpx.Client(base_url=url, headers={'Authorization': f'Bearer {token}'}, timeout=30) as c:
        def send():
            batch = fleet.tick()
            r = c.post('/v1/readings', content=orjson.dumps(batch), headers={'content-type': 'application/json'})
            out.messages += 1
            out.readings += len(batch) * len(SENSORS)
            if r.status_code == 200: out.acked += 1
            else: out.errors += 1
        out.seconds = _pace(rate, seconds, send)
    return out

# -- replay: the simulated fleet's own history, continued after the lake's end, at a chosen speed -------------------
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
            value = lambda i: None if np.isnan(val[i]) else float(val[i])
            body = b'\n'.join(orjson.dumps({'device_id': dev[i], 'ts': ts[i], 'sensor': sen[i], 'value': value(i)})
                              for i in range(a, b))
            yield pd.Timestamp(int(arr[b - 1]), unit='us', tz='UTC'), body

def run_replay_http(spec:FleetSpec, url:str, token:str, speed:float, seconds:float, on_tick=None) -> Sent:
    "POST the replayed readings (NDJSON) to `url`/v1/readings, one body per real second, for at most `seconds`."
    import httpx
    out, it = Sent(), replay_batches(spec, speed)
    headers = {'Authorization': f'Bearer {token}', 'content-type': 'application/x-ndjson'}
    with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
        def send():
            try: sim_t, body = next(it)
            except StopIteration: raise KeyboardInterrupt from None     # the replayed days are over
            r = c.post('/v1/readings', content=body)
            n = body.count(b'\n') + 1
            out.messages += 1
            out.readings += n
            if r.status_code == 200: out.acked += 1
            else: out.errors += 1
            if on_tick is not None: on_tick(sim_t, out)
        out.seconds = _pace(1.0, seconds, send)
    return out
