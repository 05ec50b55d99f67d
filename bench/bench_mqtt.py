"""MQTT ingestion: messages/s and readings/s through `iot2ml mqtt`'s ingester into the lake, and freshness.

A real Mosquitto (tests/mqtt_broker.py, on a free port), a gateway registered with `--devices` devices behind it
(the ACL lets it publish on each of their topics), and publisher processes that speak MQTT 5 over a raw socket:
QoS 1, at most `--window` messages unacknowledged each, counting the broker's PUBACKs, so a message counts as
published once the BROKER accepted it. (A paho publisher tops out near 20-24k msg/s on two cores and
`mosquitto_pub -l` drops QoS 1 messages when its input ends early; this one sends well over 100k msg/s.)
The ingester (`MqttIngester` over a `Service`, as `iot2ml mqtt` builds them) runs in this process, so its start
is not timed with Python's import time; its lake is durable Parquet (fsync on).

Two ways to measure throughput, each run against the same published messages:
  drain  the subscribers' persistent sessions exist; the publishers publish N messages while they are down;
         then each subscriber in turn connects and the clock runs until it has them all: for the ingester,
         until all N readings are in Parquet in the lake (the reported figure), and until all are acknowledged.
         The publishers do not compete for the CPU, so this is the ingester's own capacity.
  live   the subscriber runs while `--publishers` processes publish N messages as fast as the broker takes them;
         from the first publish to the last reading in the lake. Publishers, broker and ingester share 2 cores.
The ratio is against a bare paho subscriber (MQTT 5, QoS 1, the same Receive Maximum, counting only) on the
same messages; `raw` is this module's own MQTT client with no processing (the ceiling of the network layer).

Freshness: publishers paced at `--fresh-rate` msg/s for `--fresh-seconds`, each reading stamped with its
publish time; a separate process polls latest state (SQLite) every 5 ms and the lake's batch markers every
20 ms; p50/p99 of the delay from publish to visible there. Goal for the lake: at most flush_seconds + 1 s.

Example:
  python bench/bench_mqtt.py                                  # everything, 3 runs, medians
  python bench/bench_mqtt.py --only single --messages 300000 --runs 5
  python bench/bench_mqtt.py --only fresh --fresh-rate 10000 --flush-seconds 1
"""
import argparse, json, os, shutil, socket, statistics, struct, subprocess, sys, tempfile, threading, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/'tests'))
from helpers import time_when as wait   # noqa: E402  (shared with the tests)

SENSORS = ['flow', 'suction_pressure', 'discharge_pressure', 'motor_current', 'vibration', 'bearing_temp']
UNITS = ['m3/h', 'bar', 'bar', 'A', 'mm/s', 'degC']
BASE_US = 1_767_225_600_000_000   # 2026-01-01T00:00:00Z

def _iso(us):
    s, f = divmod(us, 1_000_000)
    return time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(s)) + f'.{f:06d}Z'

def payload(dev, k, per_msg, now_us=None):
    "JSON of reading k of device dev (one, or `per_msg` readings as a list); ~150 bytes a reading."
    def one(j):
        s = j % len(SENSORS)
        us = now_us if now_us is not None else BASE_US + (j // len(SENSORS)) * 1000
        return (f'{{"device_id":"{dev}","ts":"{_iso(us)}","sensor":"{SENSORS[s]}",'
                f'"value":{(j * 7919 % 100000) / 997:.6f},"unit":"{UNITS[s]}","quality":0}}')
    if per_msg == 1: return one(k).encode()
    return ('[' + ','.join(one(k * per_msg + j) for j in range(per_msg)) + ']').encode()

from iot2ml.sim.live import RawPublisher   # the live simulator's raw MQTT 5 publisher

def publisher_main(a):
    "Subprocess: publish messages k0..k1 round-robin over the devices; print timing as JSON."
    pub = RawPublisher(a['host'], a['port'], a['user'], a['password'], a['client_id'], a['window'])
    devs, per, k0, k1 = a['devices'], a['per_msg'], a['k0'], a['k1']
    topics = [f'iot2ml/{d}/telemetry' for d in devs]
    if not a.get('rate'):   # flat out: the messages are made before the clock starts, so the publisher only sends
        msgs = [(topics[j % len(devs)], payload(devs[j % len(devs)], j // len(devs), per)) for j in range(k0, k1)]
    print(json.dumps({'ready': True}), flush=True)
    sys.stdin.readline()   # go
    t0 = time.time()
    if a.get('rate'):   # paced, stamped with the publish time
        step, k = 0.002, k0
        while k < k1:
            due = t0 + (k - k0) / a['rate']
            if due > time.time(): time.sleep(max(0.0, due - time.time()))
            n = max(1, int(a['rate'] * step))
            now_us = int(time.time() * 1e6)
            pub.publish_many(((topics[j % len(devs)], payload(devs[j % len(devs)], j, per,
                                                              now_us)) for j in range(k, min(k + n, k1))), wait=False)
            k += n
        while pub.inflight: pub._read_acks(True)
    else: pub.publish_many(msgs)
    t1 = time.time()
    pub.close()
    print(json.dumps({'t0': t0, 't1': t1, 'acked': pub.acked}), flush=True)

def publish(cfg, n, per_msg, publishers, rate=None):
    "Run `publishers` processes publishing n messages in all; returns (first publish, last PUBACK) wall times."
    procs, share = [], -(-n // publishers)
    for p in range(publishers):
        a = dict(cfg['pub'], client_id=f"bench-pub-{p}-{os.getpid()}", per_msg=per_msg, k0=p * share,
                 k1=min(n, (p + 1) * share),
                 rate=(rate / publishers if rate else None))
        procs.append(subprocess.Popen([sys.executable, __file__, '_publish', json.dumps(a)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True))
    for pr in procs: assert json.loads(pr.stdout.readline())['ready']
    for pr in procs:
        pr.stdin.write('go\n')
        pr.stdin.flush()
    res = [json.loads(pr.stdout.readline()) for pr in procs]
    for pr in procs: pr.wait(60)
    assert sum(r['acked'] for r in res) == n, res
    return min(r['t0'] for r in res), max(r['t1'] for r in res)

# ----------------------------------------------------------------------------------------- setup
def setup(base:Path, devices:int):
    from mqtt_broker import start_broker
    from iot2ml.ingest.devices import Registry, write_broker_config, ingest_password, INGEST_USER
    reg = Registry(base/'registry.sqlite')
    gw = reg.add('gw-bench', kind='gateway')
    devs = [f'pump-{i:04d}' for i in range(devices)]
    for d in devs: reg.add(d, gateway_id='gw-bench')
    bc = write_broker_config(reg, base/'mq', base/'mq'/'ingest.secret')
    broker = start_broker(base, bc.passwd, bc.acl, extra=ARGS.broker_conf)
    return dict(broker=broker, user=INGEST_USER, password=ingest_password(bc.ingest_secret),
                pub=dict(host=broker.host, port=broker.port, user='gw-bench', password=gw.token, devices=devs,
                         window=ARGS.window))

def make_service(root:Path, flush_seconds:float):
    from iot2ml.config import Settings
    from iot2ml.serve.runtime import Service
    return Service(Settings(root=root, ingest=dict(flush_seconds=flush_seconds, flush_rows=ARGS.flush_rows))).start()

class Ingester:
    "The ingester as `iot2ml mqtt` runs it, in this process."
    def __init__(self, cfg, root, client_id='bench-ingest'):
        from iot2ml.serve.mqtt import MqttIngester
        self.svc = make_service(root, ARGS.flush_seconds)
        self.ing = MqttIngester(self.svc, cfg['broker'].host, cfg['broker'].port, cfg['user'], cfg['password'],
                                client_id=client_id,
                                batch_messages=ARGS.batch_messages, receive_maximum=ARGS.receive_maximum)
    def start(self):
        self.ing.start()
        assert self.ing.connected.wait(10), self.ing.last_error
        return self
    def landed(self): return self.svc.writer.stats['flushed_rows'] + self.svc.writer.stats['replayed_rows']
    def stop(self):
        self.ing.stop()
        self.svc.close()

class Counter:
    "A bare subscriber that counts: paho (QoS 1, auto-ack) or this module's client with no processing (`raw`)."
    def __init__(self, cfg, kind, client_id):
        self.cfg, self.kind, self.client_id, self.n, self.first = cfg, kind, client_id, 0, None
    def start(self):
        b = self.cfg['broker']
        if self.kind == 'paho':
            import paho.mqtt.client as mqtt
            from paho.mqtt.properties import Properties
            from paho.mqtt.packettypes import PacketTypes
            c = self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5)
            c.username_pw_set(self.cfg['user'], self.cfg['password'])
            ok = threading.Event()
            def on_message(cl, u, m): self.n += 1
            c.on_message = on_message
            c.on_subscribe = lambda *a: ok.set()
            c.on_connect = lambda cl, u, f, rc, p: cl.subscribe('iot2ml/+/telemetry', qos=1)
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
            props.ReceiveMaximum = ARGS.receive_maximum
            c.connect(b.host, b.port, clean_start=False, properties=props)
            c.loop_start()
            assert ok.wait(10)
        else:
            from iot2ml.serve.mqtt import MqttIngester, _Batch
            from iot2ml.ingest.routing import Outcome
            import concurrent.futures
            class Svc:
                def store(self, tables, outcome):
                    f = concurrent.futures.Future()
                    f.set_result(0)
                    return f
            me = self
            class Raw(MqttIngester):
                def _prepare(self, msgs, gen):
                    me.n += len(msgs)
                    return _Batch({}, Outcome(len(msgs), len(msgs)), [m[0] for m in msgs if m[0] >= 0], gen, len(msgs),
                                  0)
            self.c = Raw(Svc(), b.host, b.port, self.cfg['user'], self.cfg['password'], client_id=self.client_id,
                         batch_messages=ARGS.batch_messages, receive_maximum=ARGS.receive_maximum,
                         batch_seconds=0).start()
            assert self.c.connected.wait(10)
        return self
    def stop(self):
        if self.kind == 'paho':
            self.c.disconnect()
            self.c.loop_stop()
        else: self.c.stop()

# ----------------------------------------------------------------------------------------- throughput runs
def drain_run(base, n, per_msg):
    "Pre-publish n messages to the sessions of the ingester, paho and raw; then drain each in turn."
    cfg = setup(base, ARGS.devices)
    out = {}
    try:
        subs = {'paho': Counter(cfg, 'paho', 'bench-paho'), 'raw': Counter(cfg, 'raw', 'bench-raw')}
        ing = Ingester(cfg, base/'p0').start()
        ing.stop()   # the ingester's session exists
        for s in subs.values(): s.start().stop()
        publish(cfg, n, per_msg, ARGS.publishers)
        t0 = time.time()
        ing = Ingester(cfg, base/'p1').start()
        t_ack = wait(lambda: ing.ing.acked >= n, 600, 'ingester acks')
        t_lake = wait(lambda: ing.landed() >= n * per_msg, 600, 'lake')
        ing.stop()
        out['ingest_acked'] = n / (t_ack - t0)
        out['ingest'] = n / (t_lake - t0)
        for k, s in subs.items():
            t0 = time.time()
            s.start()
            t1 = wait(lambda: s.n >= n, 600, k)
            s.stop()
            out[k] = n / (t1 - t0)
    finally: cfg['broker'].stop()
    return out

def live_run(base, n, per_msg):
    "The subscriber runs while the publishers publish n messages flat out; ingester, then paho, then raw."
    cfg = setup(base, ARGS.devices)
    out = {}
    try:
        ing = Ingester(cfg, base/'p1').start()
        t0, t_pub = publish(cfg, n, per_msg, ARGS.publishers)
        t_ack = wait(lambda: ing.ing.acked >= n, 600, 'ingester acks')
        t_lake = wait(lambda: ing.landed() >= n * per_msg, 600, 'lake')
        ing.stop()
        out['ingest_acked'] = n / (t_ack - t0)
        out['ingest'] = n / (t_lake - t0)
        out['publish_only'] = n / (t_pub - t0)
        for k in ('paho', 'raw'):
            s = Counter(cfg, k, f'bench-live-{k}').start()
            t0, _ = publish(cfg, n, per_msg, ARGS.publishers)
            t1 = wait(lambda: s.n >= n, 600, k)
            s.stop()
            out[k] = n / (t1 - t0)
    finally: cfg['broker'].stop()
    return out

# ----------------------------------------------------------------------------------------- freshness
def poll_main(a):
    "Subprocess: poll latest state and the lake's batch markers until told to stop; write what it saw."
    import sqlite3
    import pyarrow.parquet as pq
    con = sqlite3.connect(f"file:{a['state']}?mode=ro", uri=True, timeout=5)
    marks = Path(a['lake'])/'raw'/'telemetry'/'_batches'
    latest, seen, lake_lat, lake_ts = [], set(), [], []
    stop = Path(a['stop'])
    next_lake = 0
    import pyarrow as pa   # warm up: the first Parquet read in a process takes most of a second
    warm = Path(a['ready']).with_suffix('.parquet')
    pq.write_table(pa.table({'ts': [1]}), warm, compression='zstd')
    pq.ParquetFile(warm).read(columns=['ts'])
    warm.unlink()
    Path(a['ready']).touch()
    while not stop.exists():
        t = time.time()
        try: latest.append((t, con.execute('SELECT device_id, max(ts) FROM latest GROUP BY device_id').fetchall()))
        except sqlite3.OperationalError: pass
        if t >= next_lake:
            next_lake = t + 0.02
            for m in (marks.glob('*.json') if marks.exists() else []):
                if m.name in seen: continue
                seen.add(m.name)
                info = json.loads(m.read_text())
                for f in info['files']:
                    ts = pq.ParquetFile(marks.parent/f).read(columns=['ts']).column('ts').cast('int64').to_numpy()
                    lake_lat.extend((t - ts / 1e6).tolist())
                    lake_ts.extend((ts / 1e6).tolist())
        time.sleep(0.005)
    Path(a['out']).write_text(json.dumps({'latest': latest, 'lake': lake_lat, 'lake_ts': lake_ts}))

def fresh_run(base):
    import numpy as np
    from iot2ml.lake.store import Lake
    cfg = setup(base, ARGS.devices)
    root = base/'p1'
    try:
        ing = Ingester(cfg, root).start()
        stop, outp, ready = base/'stop', base/'poll.json', base/'ready'
        poller = subprocess.Popen([sys.executable, __file__, '_poll',
                                   json.dumps(dict(state=str(root/'state'/'latest.sqlite'),
                                   lake=str(root/'data'/'lake'), stop=str(stop), out=str(outp), ready=str(ready)))])
        wait(ready.exists, 60, 'the poller')
        n = int(ARGS.fresh_rate * ARGS.fresh_seconds)
        t0, t1 = publish(cfg, n, 1, ARGS.publishers, rate=ARGS.fresh_rate)
        wait(lambda: ing.landed() >= n, 120, 'lake')
        time.sleep(ARGS.flush_seconds + 0.5)
        stop.touch()
        poller.wait(60)
        ing.stop()
        res = json.loads(outp.read_text())
        # every reading: the first latest-state poll whose newest ts for its device is at or after its ts
        got = Lake(root/'data'/'lake').sql('SELECT device_id, epoch_us(ts) AS us FROM raw.telemetry')
        polls_t = np.array([p[0] for p in res['latest']])
        per_dev = {}
        for k, (_, rows) in enumerate(res['latest']):
            for d, us in rows: per_dev.setdefault(d, ([], []))[0].append(k) or per_dev[d][1].append(us)
        lat = []
        for d, g in got.groupby('device_id'):
            ks, us = per_dev.get(d, ([], []))
            if not ks: continue
            ks, us = np.array(ks), np.maximum.accumulate(np.array(us))
            pos = np.searchsorted(us, g['us'].to_numpy())
            okp = pos < len(us)
            lat.extend((polls_t[ks[pos[okp]]] - g['us'].to_numpy()[okp] / 1e6).tolist())
        return dict(rate=n / (t1 - t0), latest=lat, lake=res['lake'], lake_ts=res['lake_ts'], polls=polls_t.tolist(),
                    t0=t0, n=n)
    finally: cfg['broker'].stop()

# ----------------------------------------------------------------------------------------- main
def median(rs, k): return statistics.median(r[k] for r in rs)

def main():
    kinds = ['single', 'batched', 'fresh'] if ARGS.only == 'all' else [ARGS.only]
    tmp = Path(tempfile.mkdtemp(prefix='bench-mqtt-', dir=ARGS.dir))
    summary = []
    try:
        for kind in kinds:
            if kind == 'fresh':
                import numpy as np
                rs = []
                for r in range(ARGS.runs):
                    res = fresh_run(tmp/f'fresh-{r}')
                    q = lambda v, p: float(np.percentile(v, p)) if v else float('nan')
                    rs.append(dict(rate=res['rate'], l50=q(res['latest'], 50), l99=q(res['latest'], 99),
                                   k50=q(res['lake'], 50), k99=q(res['lake'], 99),
                                   seen=len(res['latest']), n=res['n']))
                    print(f"  fresh run {r + 1}: {rs[-1]}", flush=True)
                summary.append(f"freshness at {median(rs, 'rate'):,.0f} msg/s (flush_seconds {ARGS.flush_seconds}): "
                               f"latest state p50 {median(rs, 'l50') * 1000:.0f} ms, "
                               f"p99 {median(rs, 'l99') * 1000:.0f} ms; lake p50 {median(rs, 'k50'):.2f} s, p99 "
                               f"{median(rs, 'k99'):.2f} s "
                               f"(goal <= {ARGS.flush_seconds + 1:.1f} s: "
                               f"{'met' if median(rs, 'k99') <= ARGS.flush_seconds + 1 else 'NOT met'})")
                continue
            per, n = (1, ARGS.messages) if kind == 'single' else (ARGS.per_msg, ARGS.batched_messages)
            unit = 'msg/s' if per == 1 else 'readings/s'
            mult = per
            for mode in ARGS.modes:
                rs = []
                for r in range(ARGS.runs):
                    rs.append((drain_run if mode == 'drain' else live_run)(tmp/f'{kind}-{mode}-{r}', n, per))
                    print(f"  {kind} {mode} run {r + 1}: " + ', '.join(f"{k} {v * mult:,.0f}" for k,
                                                                       v in rs[-1].items()), flush=True)
                    shutil.rmtree(tmp/f'{kind}-{mode}-{r}', ignore_errors=True)
                ing, paho, raw = median(rs, 'ingest'), median(rs, 'paho'), median(rs, 'raw')
                goal = 25_000 if per == 1 else 400_000
                extra = f", publishers alone {median(rs, 'publish_only') * mult:,.0f}" if mode == 'live' else ''
                summary.append(f"{kind} ({per} reading{'s' if per > 1 else ''}/message, {mode}): ingester to lake "
                               f"{ing * mult:,.0f} {unit} "
                               f"(acked {median(rs, 'ingest_acked') * mult:,.0f}); bare paho {paho * mult:,.0f} -> "
                               f"ratio {ing / paho:.2f}; "
                               f"raw client ceiling {raw * mult:,.0f} -> ratio {ing / raw:.2f}{extra}; goal {goal:,} "
                               f"{unit}: "
                               f"{'met' if ing * mult >= goal else 'NOT met'}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nSummary (median of {ARGS.runs} runs, {os.cpu_count()} CPUs, {ARGS.devices} devices, {ARGS.publishers} "
          f"publishers, window {ARGS.window}):")
    for s in summary: print('  ' + s)

if __name__ == '__main__':
    if len(sys.argv) > 2 and sys.argv[1] == '_publish':
        publisher_main(json.loads(sys.argv[2]))
        sys.exit()
    if len(sys.argv) > 2 and sys.argv[1] == '_poll':
        poll_main(json.loads(sys.argv[2]))
        sys.exit()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--only', choices=['all', 'single', 'batched', 'fresh'], default='all')
    ap.add_argument('--modes', nargs='+', choices=['drain', 'live'], default=['drain', 'live'])
    ap.add_argument('--runs', type=int, default=3)
    ap.add_argument('--messages', type=int, default=300_000, help="single-reading messages per run")
    ap.add_argument('--batched-messages', type=int, default=30_000, help="batched messages per run")
    ap.add_argument('--per-msg', type=int, default=100, help="readings per batched message")
    ap.add_argument('--devices', type=int, default=100)
    ap.add_argument('--publishers', type=int, default=2)
    ap.add_argument('--window', type=int, default=5000, help="unacknowledged messages per publisher")
    ap.add_argument('--receive-maximum', type=int, default=10_000, help="the subscribers' MQTT 5 Receive Maximum")
    ap.add_argument('--batch-messages', type=int, default=5000, help="the ingester's batch")
    ap.add_argument('--flush-seconds', type=float, default=1.0, help="[ingest] flush_seconds")
    ap.add_argument('--flush-rows', type=int, default=500_000, help="[ingest] flush_rows")
    ap.add_argument('--fresh-rate', type=float, default=10_000)
    ap.add_argument('--fresh-seconds', type=float, default=10)
    ap.add_argument('--broker-conf', default='', help="extra mosquitto.conf lines, e.g. 'set_tcp_nodelay true'")
    ap.add_argument('--dir', default=None, help="folder for the temporary lakes (default: the system's temp)")
    ARGS = ap.parse_args()
    main()
