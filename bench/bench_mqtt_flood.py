"""MQTT: does a flood of bad messages from one device cost more than good ones, and delay another device's readings?

A real Mosquitto (tests/mqtt_broker.py, on a free port of 127.0.0.1) and the ingester (`MqttIngester` over a
`Service`, as `iot2ml mqtt` builds them) in this process. Each run publishes, with a raw MQTT 5 QoS 1 publisher
(iot2ml.sim.live.RawPublisher), `--messages` single-reading messages of pump-b while the ingester runs:
  good   valid readings, each with its own time;
  bad    the same readings with a time that cannot be read ("ts": "yesterday"): every one is dead-lettered.
The time of a flood runs from the first publish to the moment the ingester has acknowledged every message (for
good ones: fsynced in the spool; for bad ones: written to the dead-letter store). Right after the broker
acknowledged the last message of the flood, pump-a publishes one good reading; its delay is the time from that
publish until it is in latest state (SQLite, polled every 5 ms).

Done when: bad / good <= 2 and pump-a's delay after a bad flood <= 1 s (medians of `--runs` runs).

Example:
  python bench/bench_mqtt_flood.py                  # 10,000 messages, 3 runs, medians
  python bench/bench_mqtt_flood.py --messages 3000 --runs 1
"""
import argparse, json, shutil, statistics, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/'tests'))
from helpers import time_when as wait   # noqa: E402  (shared with the tests)

BASE = 1_767_225_600   # 2026-01-01T00:00:00Z

def payload(k:int, bad:bool) -> bytes:
    ts = '"yesterday"' if bad else str(BASE + k)
    return f'{{"ts":{ts},"sensor":"flow","value":{k % 1000 / 10}}}'.encode()

def run(base:Path, n:int, bad:bool) -> dict:
    "One flood of `n` messages (bad or good) from pump-b, then one good reading of pump-a."
    from mqtt_broker import start_broker
    from iot2ml.config import Settings
    from iot2ml.sim.live import RawPublisher
    from iot2ml.serve.mqtt import MqttIngester
    from iot2ml.ingest.devices import INGEST_USER, Registry, ingest_password, write_broker_config
    from iot2ml.serve.runtime import Service
    reg = Registry(base/'registry.sqlite')
    tok = {d: reg.add(d, type='pump').token for d in ('pump-a', 'pump-b')}
    bc = write_broker_config(reg, base/'mq', base/'mq'/'ingest.secret')
    broker = start_broker(base, bc.passwd, bc.acl)
    svc = ing = None
    try:
        svc = Service(Settings(root=base/'p', ingest=dict(flush_seconds=1.0))).start()
        ing = MqttIngester(svc, broker.host, broker.port, INGEST_USER, ingest_password(bc.ingest_secret),
                           client_id='bench-flood').start()
        assert ing.connected.wait(10), ing.last_error
        pb = RawPublisher(broker.host, broker.port, 'pump-b', tok['pump-b'], 'bench-b', 5000)
        pa_ = RawPublisher(broker.host, broker.port, 'pump-a', tok['pump-a'], 'bench-a', 10)
        msgs = [('iot2ml/pump-b/telemetry', payload(k, bad)) for k in range(n)]
        t0 = time.time()
        pb.publish_many(msgs)                      # returns once the broker acknowledged all of them
        t_a = time.time()
        pa_.publish_many([('iot2ml/pump-a/telemetry', json.dumps({'ts': time.time(), 'sensor': 'flow',
                                                                  'value': 1.0}).encode())])
        t_seen = wait(lambda: svc.state.device('pump-a') is not None, 120, "pump-a's reading in latest state")
        t_done = wait(lambda: ing.acked >= n + 1, 600, 'the flood acknowledged')
        pb.close()
        pa_.close()
        dl = svc.deadletters.count
        return dict(flood=t_done - t0, delay=t_seen - t_a, deadletters=dl)
    finally:
        if ing is not None: ing.stop()
        if svc is not None: svc.close()
        broker.stop()

def main(a):
    tmp = Path(tempfile.mkdtemp(prefix='bench-flood-', dir=a.dir))
    res = {'good': [], 'bad': []}
    try:
        for r in range(a.runs):
            for kind in ('good', 'bad'):
                out = run(tmp/f'{kind}-{r}', a.messages, kind == 'bad')
                res[kind].append(out)
                print(f"  run {r + 1} {kind}: {a.messages:,} messages in {out['flood']:.2f} s; pump-a's reading after "
                      f"it: "
                      f"{out['delay'] * 1000:.0f} ms; dead letters {out['deadletters']:,}", flush=True)
                shutil.rmtree(tmp/f'{kind}-{r}', ignore_errors=True)
    finally: shutil.rmtree(tmp, ignore_errors=True)
    med = lambda k, f: statistics.median(x[f] for x in res[k])
    ratio = med('bad', 'flood') / med('good', 'flood')
    print(f"\nSummary (median of {a.runs} runs, {a.messages:,} messages):")
    print(f"  good flood {med('good', 'flood'):.2f} s, bad flood {med('bad', 'flood'):.2f} s -> ratio {ratio:.2f} "
          f"(goal <= 2: {'met' if ratio <= 2 else 'NOT met'})")
    d = med('bad', 'delay')
    print(f"  pump-a's reading after the bad flood: {d * 1000:.0f} ms (after the good flood "
          f"{med('good', 'delay') * 1000:.0f} ms; "
          f"goal <= 1 s: {'met' if d <= 1 else 'NOT met'})")

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--messages', type=int, default=10_000)
    ap.add_argument('--runs', type=int, default=3)
    ap.add_argument('--dir', default=None, help="folder for the temporary projects (default: the system's temp)")
    main(ap.parse_args())
