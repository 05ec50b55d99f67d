"""Parse and validation cost in process: readings/s of `parse_body` + `check_parsed` (what `POST /v1/readings` does
before storing) and of the MQTT ingester's `_prepare` (parse, check and route a batch of messages), no network, no disk.

Bodies: `json-iso` / `json-epoch` are 1,000 long readings (6 sensors of one device, timestamps as ISO 8601 strings with
a zone or epoch seconds), which take the columnar fast path; `json-wide` is 1,000 wide records of 6 sensors and `csv`
1,000 long rows, which go through `schema.validate`. `mqtt-1` is 5,000 messages of one reading each, `mqtt-100` 100
messages of 100 readings (over 10 devices). Each case runs for about `--seconds` of CPU time, timed in CPU seconds of
this process (`time.process_time`), so other processes on a shared machine disturb the figure less; the best of `--runs`
is reported.

Example:
  python bench/bench_parse.py
  python bench/bench_parse.py --runs 5 --only json-iso mqtt-1
"""
import argparse, json, sys, tempfile, time
from pathlib import Path

import pandas as pd

from iot2ml.ingest.parse import check_parsed, parse_body

SENSORS = ['flow', 'suction_pressure', 'discharge_pressure', 'motor_current', 'vibration', 'bearing_temp']
T0 = 1_767_225_600   # 2026-01-01T00:00:00Z

def _iso(s): return pd.Timestamp(s, unit='s', tz='UTC').strftime('%Y-%m-%dT%H:%M:%SZ')

def long_records(n, ts='iso', dev='pump-0001'):
    return [{'device_id': dev, 'ts': _iso(T0 + i // 6) if ts == 'iso' else T0 + i // 6, 'sensor': SENSORS[i % 6],
             'value': 1.0 + i % 97, 'unit': 'u'} for i in range(n)]

def bodies() -> dict:
    wide = [{'device_id': 'pump-0001', 'ts': _iso(T0 + i), **{s: 1.0 + i % 7 for s in SENSORS}} for i in range(1000)]
    csv = 'device_id,ts,sensor,value\n' + ''.join(f"pump-0001,{r['ts']},{r['sensor']},{r['value']}\n"
                                                  for r in long_records(1000))
    return {'json-iso': (json.dumps(long_records(1000)).encode(), 'application/json', 1000),
            'json-epoch': (json.dumps(long_records(1000, 'epoch')).encode(), 'application/json', 1000),
            'json-wide': (json.dumps(wide).encode(), 'application/json', 6000),
            'csv': (csv.encode(), 'text/csv', 1000)}

def bench_body(body, ct, readings, seconds):
    now = pd.Timestamp('2026-06-01', tz='UTC')
    n = 0
    t = time.process_time()
    while time.process_time() - t < seconds:
        tab, _, errs = check_parsed(parse_body(body, ct), now=now)
        n += 1
        assert tab.num_rows == readings and not errs, errs[:3]
    return n * readings / (time.process_time() - t)

def mqtt_messages(kind):
    if kind == 'mqtt-1':
        return [(i, f'iot2ml/pump-{i % 10:04d}/telemetry'.encode(),
                 json.dumps({'ts': _iso(T0 + i), 'sensor': SENSORS[i % 6],
                             'value': float(i)}).encode()) for i in range(5000)], 5000
    return [(i, f'iot2ml/pump-{i % 10:04d}/telemetry'.encode(),
             json.dumps([{k: v for k, v in r.items() if k != 'device_id'} for r in long_records(100)]).encode())
            for i in range(100)], 10_000

def bench_mqtt(kind, seconds):
    from iot2ml.config import Settings
    from iot2ml.serve.mqtt import MqttIngester
    from iot2ml.serve.runtime import Service
    msgs, readings = mqtt_messages(kind)
    with tempfile.TemporaryDirectory() as d:
        svc = Service(Settings(root=Path(d)))
        ing = MqttIngester(svc)
        n = 0
        t = time.process_time()
        while time.process_time() - t < seconds:
            b = ing._prepare(msgs, 0)
            n += 1
            assert b.outcome.accepted == b.outcome.records, b.outcome
        rate = n * readings / (time.process_time() - t)
        svc.updater.close()
    return rate

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--runs', type=int, default=3, help="runs per case; the best is reported")
    ap.add_argument('--seconds', type=float, default=2.0, help="seconds per run")
    ap.add_argument('--only', nargs='*', help="cases to run (default: all)")
    a = ap.parse_args()
    bs = bodies()
    cases = [*bs, 'mqtt-1', 'mqtt-100']
    for c in a.only or cases:
        f = (lambda: bench_body(*bs[c], a.seconds)) if c in bs else (lambda: bench_mqtt(c, a.seconds))
        best = max(f() for _ in range(a.runs))
        print(f"{c:<12} {best:>12,.0f} readings per CPU second", flush=True)

if __name__ == '__main__': main()
