"""Live fleet: stream simulated pumps in real time over MQTT or HTTP (`iot2ml simulate --live`), for demos and load tests.

Hand-written (a paced publishing loop). Each tick, every device sends one wide message with its seven
sensors at the wall-clock time, from the simulator's own physics (demand cycle, VFD speed, pump and system
curves, efficiency, motor) with noise; no faults. MQTT: each device publishes on its own topic with QoS 1
(in-flight capped, see PERF-NOTES) using the ingester-style shared connection, or per-device credentials
when given a token map; HTTP: one batch per tick with an admin or gateway token. Bounded: it stops after
`--seconds` (or Ctrl-C) and reports what was sent and acknowledged.
"""
from __future__ import annotations
import json, math, threading, time
from dataclasses import dataclass
import numpy as np, orjson, pandas as pd

from .simulate import FleetSpec, SENSORS, UNITS, _assets, demand_profile, speed_for, operating_point, efficiency, motor, hydraulic_kw, device_ids

__all__ = ['LiveFleet', 'run_mqtt', 'run_http']

class LiveFleet:
    "Vectorised per-tick readings for `pumps` simulated pumps (the same fleet as `FleetSpec(pumps, seed)`)."
    def __init__(self, pumps:int, seed:int=42):
        self.spec = FleetSpec(pumps=pumps, days=1, seed=seed)
        self.a = _assets(self.spec); self.ids = device_ids(pumps); self.rng = np.random.default_rng(seed + 1)

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

def run_mqtt(fleet:LiveFleet, host:str, port:int, username:str|None, password:str|None, rate:float, seconds:float,
             max_inflight:int=20_000) -> Sent:
    "Publish each device's reading on iot2ml/<id>/telemetry at `rate` ticks per second, QoS 1, for `seconds`."
    import paho.mqtt.client as mqtt
    out = Sent(); lock = threading.Lock(); inflight = threading.Semaphore(max_inflight)
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"iot2ml-live-{time.time_ns()}", protocol=mqtt.MQTTv311)
    if username: c.username_pw_set(username, password)
    c.max_inflight_messages_set(max_inflight); c.max_queued_messages_set(0)
    def on_publish(client, userdata, mid, reason_code, properties):
        with lock: out.acked += 1
        inflight.release()
    c.on_publish = on_publish
    c.connect(host, port, 30); c.loop_start()
    def send():
        for r in fleet.tick():
            inflight.acquire()
            info = c.publish(f"iot2ml/{r['device_id']}/telemetry", orjson.dumps(r), qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS: out.errors += 1; inflight.release()
            out.messages += 1; out.readings += len(SENSORS)
    out.seconds = _pace(rate, seconds, send)
    deadline = time.monotonic() + 30
    while out.acked + out.errors < out.messages and time.monotonic() < deadline: time.sleep(0.05)
    c.disconnect(); c.loop_stop()
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
