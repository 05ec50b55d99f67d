"""Inference: `POST /v1/predict` latency and throughput, and what streaming scoring costs ingestion, on a real server.

Setup (once): the example workspace (`iot2ml.ml.pipeline.example_workspace('evaluate')`: 8 pumps x 14 days, a trained
bundle) gives a latest-state file fed with every reading of its lake and a model registry with that bundle as champion.
Each run copies them into a fresh project and starts the API (the `iot2ml serve` app: `create_app` + `Service`, one
uvicorn worker) in its own process on a free loopback port.

1. Open loop: one device per request (`{"devices": ["pump-000k"]}`, k cycling over the 8 pumps) sent at a fixed `--rate`
   (default 200 req/s) for `--seconds` (20) from an asyncio client with a pool of keep-alive connections; latency is
   measured from each request's scheduled send time (no coordinated omission). p50/p99, achieved rate, errors.
2. Closed loop: `wrk` with `--connections` connections, the same one-device body: the most requests/s the server
   answers.
3. Ingestion with streaming scoring on vs off: `wrk` posting a body of 1,000 readings of the 8 pumps (the hour after the
   lake ends) for `--ingest-seconds`; scoring passes every `--interval` s (every pass re-scores the 8 devices, whose
   state changed). Ratio of readings/s on / off (goal >= 0.8).
4. Scale case (`--devices`, default 1,000; 0 skips it): latest state warmed with 250 hourly aggregates per device and
   sensor (the example pumps' own hours, pump i%8 for device i, scaled 0.95-1.05 per device), the example bundle with
   `expected` set to this stream's readings per interval. Then 16 keep-alive clients post bodies of 1,000 readings in
   time order: every `--step-seconds` (30) simulated seconds each device sends each of its 7 sensors once, so the
   fleet's 7,000 readings of one step fill 7 bodies and every device completes an interval every 840 bodies (~3 s of
   wall time at 300k readings/s). Same bodies with scoring off and on, `--scale-seconds` (20) each; readings/s, ratio,
   scoring passes, devices per pass and seconds per pass (/metrics), and the lag from an interval's end (the
   acknowledgement of the first body of the next interval holding the device) to its score's `scored_at` (GET
   /v1/scores, polled every second; both modes).
Medians of `--runs` runs. `wrk` is installed with apt-get when missing (needs root).

Example:
  python bench/bench_predict.py          # 3 runs: 20 s open loop at 200 req/s, 10 s closed loop, 10 s ingestion x2
  python bench/bench_predict.py --runs 1 --seconds 5 --ingest-seconds 5
  python bench/bench_predict.py --only-scale --devices 1000   # only the scale case
"""
import argparse, asyncio, json, os, shutil, signal, statistics, subprocess, sys, tempfile, time
from pathlib import Path
import math
import numpy as np, orjson, pandas as pd, pyarrow as pa

BIN = Path(sys.executable).parent
sys.path.insert(0, str(Path(__file__).resolve().parents[1]/'tests'))
from helpers import free_port   # noqa: E402  (shared with the tests)
DEVICES = [f"pump-{i:04d}" for i in range(1, 9)]

def ensure_wrk() -> str:
    if shutil.which('wrk'): return shutil.which('wrk')
    if os.geteuid() != 0: sys.exit("wrk is not installed and this is not root; run: sudo apt-get install -y wrk")
    subprocess.run(['apt-get', 'install', '-y', '-qq', 'wrk'], check=True, stdout=subprocess.DEVNULL,
                   env=os.environ | {'DEBIAN_FRONTEND': 'noninteractive'})
    return shutil.which('wrk')

def prepare(base:Path) -> Path:
    "A template project: latest state fed from the example lake, the example bundle registered and promoted."
    from iot2ml.ml.features import FeatureSpec
    from iot2ml.lake.store import Lake
    from iot2ml.ml.registry import ModelRegistry
    from iot2ml.ml.models import load_model, save_model
    from iot2ml.ml.pipeline import example_workspace
    from iot2ml.ingest.state import LatestState
    ws = example_workspace('evaluate')
    t = base/'template'
    (t/'state').mkdir(parents=True)
    m = load_model(ws['model_dir'])
    if getattr(m, 'feature_spec', None) is None:   # bundles made before the spec was kept in them
        summary = json.loads((ws['prepared_dir']/'summary.json').read_text())
        m.feature_spec = FeatureSpec(expected=summary['expected_per_interval'])
    save_model(m, base/'bundle')
    reg = ModelRegistry(t/'state'/'registry')
    reg.promote(reg.register(base/'bundle'), reason='benchmark')
    st = LatestState(t/'state'/'latest.sqlite', window='30D')
    r = Lake(ws['lake_dir'], ws['reference_dir'], fsync=False).read('telemetry', tier='processed')
    st.update(pa.Table.from_pandas(r[['device_id', 'sensor', 'ts', 'value']], preserve_index=False))
    st.con.execute('PRAGMA wal_checkpoint(TRUNCATE)')
    st.con.close()
    return t

class Server:
    "The API in its own process (this script's `serve` mode) in a copy of the template project."
    def __init__(self, template:Path, base:Path, score:bool, interval:float):
        self.root, self.port = base, free_port()
        shutil.copytree(template, base)
        (base/'iot2ml.toml').write_text(f"[ingest]\nport = {self.port}\nrate_limit = 1e12\nrate_burst = "
                                        f"1e12\nmax_body_bytes = 67108864\nwindow = '30D'\n")
        from iot2ml.ingest.devices import Registry
        self.token = Registry(base/'state'/'registry.sqlite').add_admin('bench').token
        self.url = f'http://127.0.0.1:{self.port}'
        self.score, self.interval = score, interval
    def start(self):
        import httpx
        self.log = open(self.root/'serve.log', 'ab')
        self.proc = subprocess.Popen([sys.executable, __file__, 'serve', str(self.root), '--interval',
                                      str(self.interval)] + (['--score'] if self.score else []),
                                     stdout=self.log, stderr=subprocess.STDOUT)
        for _ in range(600):
            try:
                if httpx.get(self.url + '/healthz', timeout=0.5).status_code == 200: return self
            except httpx.HTTPError: pass
            if self.proc.poll() is not None: break
            time.sleep(0.05)
        raise RuntimeError(f"the server did not start: {(self.root/'serve.log').read_text()[-2000:]}")
    def metrics(self) -> dict:
        import httpx
        txt = httpx.get(self.url + '/metrics', headers={'Authorization': f'Bearer {self.token}'}, timeout=10).text
        return {l.rsplit(' ', 1)[0]: float(l.rsplit(' ',
                                                    1)[1]) for l in txt.splitlines() if l and not l.startswith('#')}
    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(120)
        self.log.close()

def serve(root:Path, score:bool, interval:float):
    "Server mode: the `iot2ml serve` app, with streaming scoring on or off."
    import uvicorn
    from iot2ml.serve.http import create_app, _tune_gc
    from iot2ml.config import ScoringSettings, load_settings
    from iot2ml.serve.runtime import Service
    s = load_settings(root/'iot2ml.toml')
    svc = Service(s, scoring=ScoringSettings(enabled=score, interval=interval)).start()
    _tune_gc()
    try: uvicorn.run(create_app(s, svc), host='127.0.0.1', port=s.ingest.port, log_level='warning', access_log=False,
                     log_config=None)
    finally: svc.close()

async def open_loop(port:int, token:str, rate:float, seconds:float, conns:int=32) -> dict:
    "Send one-device requests at `rate`/s for `seconds`; latency from each request's scheduled time."
    bodies = [orjson.dumps({'devices': [d]}) for d in DEVICES]
    reqs = [(f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nContent-Type: "
             f"application/json\r\n"
             f"Content-Length: {len(b)}\r\n\r\n").encode() + b for b in bodies]
    pool = asyncio.Queue()
    for _ in range(conns): pool.put_nowait(await asyncio.open_connection('127.0.0.1', port))
    lat, errors, versions = [], 0, set()
    async def one(i:int, t_sched:float):
        nonlocal errors
        r, w = await pool.get()
        try:
            w.write(reqs[i % len(reqs)])
            head = await r.readuntil(b'\r\n\r\n')
            n = int(next(l.split(b':')[1] for l in head.split(b'\r\n') if l.lower().startswith(b'content-length')))
            body = await r.readexactly(n)
            lat.append(time.perf_counter() - t_sched)
            if not head.startswith(b'HTTP/1.1 200'): errors += 1
            else: versions.add(orjson.loads(body)['model_version'])
        except Exception:
            errors += 1
            r, w = await asyncio.open_connection('127.0.0.1', port)
        finally: pool.put_nowait((r, w))
    n = int(rate * seconds)
    tasks = []
    t0 = time.perf_counter() + 0.1
    for i in range(n):
        t = t0 + i / rate
        d = t - time.perf_counter()
        if d > 0: await asyncio.sleep(d)
        tasks.append(asyncio.create_task(one(i, t)))
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - t0
    while not pool.empty(): pool.get_nowait()[1].close()
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1e3
    return dict(requests=n, achieved=len(lat) / wall, errors=errors, p50_ms=q(0.5), p99_ms=q(0.99),
                max_ms=lat[-1] * 1e3, versions=sorted(versions))

LUA = """
wrk.method = "POST"; wrk.body = %s
wrk.headers["Content-Type"] = "application/json"; wrk.headers["Authorization"] = "Bearer %s"
done = function(summary, latency, requests)
  io.write(string.format('\\nRESULT {"requests":%%d,"duration_us":%%d,"errors":%%d,"p50_us":%%d,"p99_us":%%d}\\n',
    summary.requests, summary.duration,
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""

def wrk_run(wrk:str, srv:Server, path:str, body:bytes, seconds:int, conns:int) -> dict:
    (srv.root/'body.json').write_bytes(body)
    script = srv.root/'post.lua'
    script.write_text(LUA % (json.dumps(body.decode()), srv.token))
    p = subprocess.run([wrk, '-t1', f'-c{conns}', f'-d{seconds}s', '--timeout', '30s', '-s', str(script),
                        srv.url + path], capture_output=True, text=True)
    line = [l for l in p.stdout.splitlines() if l.startswith('RESULT ')]
    if p.returncode or not line: raise RuntimeError(f"wrk failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    r = json.loads(line[-1][7:])
    r['rate'] = (r['requests'] - r['errors']) / (r['duration_us'] / 1e6)
    return r

def readings_body(n:int=1000) -> bytes:
    "`n` long readings of the 8 pumps in the hour after the example lake ends (so the latest-state features move)."
    sensors = ['flow', 'power', 'vibration_rms', 'motor_current', 'bearing_temp', 'discharge_pressure',
               'suction_pressure']
    t0 = pd.Timestamp('2026-01-15', tz='UTC')
    out = []
    for i in range(n):
        d, s = DEVICES[i % 8], sensors[(i // 8) % len(sensors)]
        out.append({'device_id': d, 'ts': (t0 + pd.Timedelta(seconds=i)).strftime('%Y-%m-%dT%H:%M:%SZ'), 'sensor': s,
                    'value': 10 + i % 17})
    return orjson.dumps(out)

# -- scale case: N devices with history, readings whose time advances --------------------------------------------------

T0 = pd.Timestamp('2026-01-15', tz='UTC')   # the hour after the example lake ends: the stream starts here

def scale_template(base:Path, n:int, step_s:int, hours:int=250, seed:int=0) -> tuple[Path, np.ndarray, np.ndarray]:
    """A template project for `n` devices: latest state warmed with `hours` hourly aggregates per device and sensor (the
    example pumps' own hours, pump i%8 for device i, scaled by a per-device factor 0.95-1.05, counts as if a sensor sent
    every `step_s` s), the example bundle with `expected` = 3600/`step_s` as champion. Returns it and the stream's level
    and noise per (device, sensor) pair (its last day's mean and std)."""
    from iot2ml.lake.store import Lake
    from iot2ml.ml.registry import ModelRegistry
    from iot2ml.ml.models import load_model, save_model
    from iot2ml.ml.pipeline import example_workspace
    from iot2ml.sim.fleet import SENSORS, device_ids
    from iot2ml.ingest.state import LatestState
    ws = example_workspace('evaluate')
    t = base/f'scale-template-{n}'
    (t/'state').mkdir(parents=True)
    m = load_model(ws['model_dir'])
    m.feature_spec.expected = 3600 / step_s   # the bundle's spec, with this stream's readings per interval
    save_model(m, base/f'bundle-{n}')
    reg = ModelRegistry(t/'state'/'registry')
    reg.promote(reg.register(base/f'bundle-{n}'), reason='benchmark')
    src = Lake(ws['lake_dir'], ws['reference_dir'], fsync=False).aggregate('telemetry', every='3600 seconds',
                                                                           tier='processed')
    src = src[(src['ts'] >= T0 - pd.Timedelta(hours=hours)) & (src['ts'] < T0)]
    ids, rng = device_ids(n), np.random.default_rng(seed)
    factor = rng.uniform(0.95, 1.05, n)
    scale = (3600 / step_s) / 12   # the example sends every 5 min
    parts = []
    for i, d in enumerate(ids):
        a = src[src['device_id'] == DEVICES[i % 8]]
        parts.append(pd.DataFrame({'device_id': d, 'ts': a['ts'], 'sensor': a['sensor'], 'mean': a['mean'] * factor[i],
                                   'std': a['std'] * factor[i],
                                   'min': a['min'] * factor[i], 'max': a['max'] * factor[i],
                                   'count': (a['count'] * scale).round().astype('int64')}))
    agg = pd.concat(parts, ignore_index=True)
    st = LatestState(t/'state'/'latest.sqlite', window='30D')
    st.warm(agg)
    st.con.execute('PRAGMA wal_checkpoint(TRUNCATE)')
    st.con.close()
    day = agg[agg['ts'] >= T0 - pd.Timedelta(hours=24)].groupby(['device_id', 'sensor'])[['mean', 'std']].mean()
    pairs = pd.MultiIndex.from_product([ids, list(SENSORS)], names=['device_id', 'sensor'])
    day = day.reindex(pairs)
    return t, day['mean'].fillna(0).to_numpy(), day['std'].fillna(0).to_numpy()

def stream_bodies(n:int, level:np.ndarray, noise:np.ndarray, step_s:int, count:int, seed:int=1) -> list[bytes]:
    """`count` bodies of 1,000 readings in time order: at each step (`step_s` simulated seconds) every device sends
    every sensor once, its N x 7 readings split over consecutive bodies (the last one of a step may be shorter)."""
    from iot2ml.sim.fleet import SENSORS, device_ids
    pre = [f'{{"device_id":"{d}","sensor":"{s}","ts":"'.encode() for d in device_ids(n) for s in SENSORS]
    rng, per, out, k = np.random.default_rng(seed), len(pre), [], 0
    while len(out) < count:
        ts = (T0 + pd.Timedelta(seconds=k * step_s)).strftime('%Y-%m-%dT%H:%M:%SZ').encode()
        vals = np.round(level + noise * rng.standard_normal(per), 3).tolist()
        for j in range(0, per, 1000):
            rows = (pre[i] + ts + b'","value":' + repr(vals[i]).encode() + b'}' for i in range(j, min(j + 1000, per)))
            out.append(b'[' + b','.join(rows) + b']')
        k += 1
    return out[:count]

async def stream_load(srv:Server, bodies:list[bytes], seconds:float, conns:int=16, poll:float=1.0) -> dict:
    """Post `bodies` in order from `conns` keep-alive connections (closed loop) for `seconds`; GET /v1/scores every
    `poll` s. Returns readings/s, p99, errors, each body's acknowledgement time and the polls."""
    head = lambda b: (f"POST /v1/readings HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
                      f"{srv.token}\r\nContent-Type: application/json\r\n"
                      f"Content-Length: {len(b)}\r\n\r\n").encode()
    async def response(r):
        h = await r.readuntil(b'\r\n\r\n')
        n = int(next(l.split(b':')[1] for l in h.split(b'\r\n') if l.lower().startswith(b'content-length')))
        return h, await r.readexactly(n)
    acked = np.full(len(bodies), np.nan)
    lat, errors, readings, nxt = [], 0, 0, 0
    t0 = time.perf_counter()
    end = t0 + seconds
    wall0 = time.time() - t0
    async def client():
        nonlocal nxt, errors, readings
        r, w = await asyncio.open_connection('127.0.0.1', srv.port)
        while time.perf_counter() < end and nxt < len(bodies):
            k = nxt
            nxt += 1
            b = bodies[k]
            ts = time.perf_counter()
            w.write(head(b))
            w.write(b)
            h, body = await response(r)
            t = time.perf_counter()
            lat.append(t - ts)
            if h.startswith(b'HTTP/1.1 200'):
                acked[k] = t
                readings += orjson.loads(body)['accepted']
            else: errors += 1
        w.close()
    polls = []
    async def poller():
        r, w = await asyncio.open_connection('127.0.0.1', srv.port)
        req = f"GET /v1/scores HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {srv.token}\r\n\r\n".encode()
        while time.perf_counter() < end:
            await asyncio.sleep(poll)
            w.write(req)
            h, body = await response(r)
            if h.startswith(b'HTTP/1.1 200'): polls.append((time.perf_counter(), orjson.loads(body)))
        w.close()
    await asyncio.gather(poller(), *[client() for _ in range(conns)])
    wall = time.perf_counter() - t0
    if nxt >= len(bodies): print(f"        (the {len(bodies):,} prepared bodies ran out after {wall:.1f} s; raise "
                                 f"--scale-bodies)", flush=True)
    lat.sort()
    return dict(readings_per_s=readings / wall, p99_ms=lat[int(0.99 * len(lat))] * 1e3 if lat else math.nan,
                errors=errors,
                acked=acked, polls=polls, wall0=wall0)

def score_lag(res:dict, n:int, step_s:int) -> dict:
    """From the polls of /v1/scores: per device score, the seconds from its interval's completion (the acknowledgement
    of the first body holding the device's readings of the next interval) to its `scored_at`; and how many intervals
    behind the newest complete one each device's score was at each poll."""
    per_step = -(-n * 7 // 1000)
    acked = res['acked']
    def done_at(ts_us, dev_i):   # wall (perf_counter) time the interval starting at ts_us was complete for device dev_i
        k = (int((ts_us + 3_600_000_000 - T0.value // 1000) // (step_s * 1_000_000)) * per_step + dev_i * 7 // 1000)
        return acked[k] if 0 <= k < len(acked) else math.nan
    lags, behind, seen = [], [], set()
    steps_acked = np.where(~np.isnan(acked))[0]
    for t, rows in res['polls']:
        k_done = (acked <= t).nonzero()[0]
        if not len(k_done): continue
        newest_step = k_done.max() // per_step   # the stream's newest step acknowledged at poll time
        newest_complete = (T0 + pd.Timedelta(seconds=newest_step * step_s)).floor('1h') - pd.Timedelta(hours=1)
        for r in rows:
            ts = pd.Timestamp(r['ts'])
            i = int(r['device_id'].split('-')[1]) - 1
            behind.append((newest_complete - ts) / pd.Timedelta(hours=1))
            key = (r['device_id'], r['ts'])
            if key in seen: continue
            seen.add(key)
            d = done_at(ts.value // 1000, i)
            if not math.isnan(d): lags.append(pd.Timestamp(r['scored_at']).timestamp() - (res['wall0'] + d))
    q = lambda xs, p: float(np.percentile(xs, p)) if len(xs) else math.nan
    return dict(lag_p50=q(lags, 50), lag_p95=q(lags, 95), lag_n=len(lags), behind_p50=q(behind, 50),
                behind_max=max(behind, default=math.nan))

def scale_case(a, base:Path) -> dict:
    ("Ingestion of a fleet of --devices whose intervals complete every few seconds, scoring off vs on; medians of "
     "--runs.")
    t = time.perf_counter()
    template, level, noise = scale_template(base, a.devices, a.step_seconds)
    bodies = stream_bodies(a.devices, level, noise, a.step_seconds, a.scale_bodies)
    per_hour = a.devices * 7 * 3600 // a.step_seconds
    print(f"scale case: {a.devices} devices x 7 sensors warmed with 250 h each, a reading per sensor every "
          f"{a.step_seconds} simulated s ({per_hour:,} readings per simulated hour); "
          f"{len(bodies):,} bodies ready in {time.perf_counter() - t:.0f} s", flush=True)
    res = {'off': [], 'on': []}
    for i in range(a.runs):
        for mode in ('off', 'on'):
            srv = Server(template, base/f'scale-{i}-{mode}', mode == 'on', a.interval).start()
            try:
                r = asyncio.run(stream_load(srv, bodies, a.scale_seconds))
                time.sleep(0.2)
                m = srv.metrics()
            finally: srv.stop()
            r['skipped'] = {k.split('"')[1]: int(v) for k,
                            v in m.items() if k.startswith('iot2ml_scoring_devices_skipped_total{')}
            r.update(passes=m.get('iot2ml_scoring_passes_total', 0),
                     scored=m.get('iot2ml_scoring_devices_scored_total', 0),
                     last_pass=m.get('iot2ml_scoring_last_pass_seconds', math.nan),
                     pending=m.get('iot2ml_scoring_pending_devices', 0),
                     intervals=r['readings_per_s'] * a.scale_seconds / per_hour)
            if mode == 'on':
                r.update(score_lag(r, a.devices, a.step_seconds))
                r['per_pass'] = r['scored'] / max(r['passes'], 1)
                r['pass_s'] = a.scale_seconds / max(r['passes'], 1)
            res[mode].append(r)
            print(f"run {i + 1} scale, scoring {mode}: {r['readings_per_s']:,.0f} readings/s ({r['intervals']:.1f} "
                  f"simulated hours in {a.scale_seconds} s), "
                  f"p99 {r['p99_ms']:.0f} ms, {r['errors']} errors" + (f"; {r['passes']:.0f} passes, "
                                                                       f"{r['per_pass']:.0f} devices per pass, "
                  f"last pass {r['last_pass']:.2f} s, {r['pending']:.0f} pending at the end; lag interval end -> score "
                  f"p50 {r['lag_p50']:.1f} s, "
                  f"p95 {r['lag_p95']:.1f} s ({r['lag_n']} scores); skipped {r['skipped']}; intervals behind p50 "
                  f"{r['behind_p50']:.0f}, max {r['behind_max']:.0f}" if mode == 'on' else ''), flush=True)
    return res

def main(a):
    wrk = ensure_wrk()
    base = Path(tempfile.mkdtemp(prefix='iot2ml-predict-bench-', dir=a.dir))
    try:
        template = prepare(base)
        k = 0
        def server(score=False):
            nonlocal k
            k += 1
            return Server(template, base/f'run{k}', score, a.interval).start()
        opens, closed, ing = [], [], {'off': [], 'on': []}
        for i in range(0 if a.only_scale else a.runs):
            srv = server()
            try:
                asyncio.run(open_loop(srv.port, srv.token, a.rate, 2))          # warm-up: connections, caches
                o = asyncio.run(open_loop(srv.port, srv.token, a.rate, a.seconds))
                opens.append(o)
                c = wrk_run(wrk, srv, '/v1/predict', orjson.dumps({'devices': [DEVICES[0]]}), a.closed_seconds,
                            a.connections)
                closed.append(c)
            finally: srv.stop()
            print(f"run {i + 1}: open loop {a.rate:.0f} req/s for {a.seconds} s: achieved {o['achieved']:.1f} req/s, "
                  f"p50 {o['p50_ms']:.2f} ms, "
                  f"p99 {o['p99_ms']:.2f} ms, max {o['max_ms']:.1f} ms, {o['errors']} errors (model "
                  f"{','.join(o['versions'])}); "
                  f"closed loop (wrk -c{a.connections}): {c['rate']:,.0f} req/s, p50 {c['p50_us'] / 1e3:.2f} ms, p99 "
                  f"{c['p99_us'] / 1e3:.2f} ms, {c['errors']} errors", flush=True)
            body = readings_body()
            for mode in ('off', 'on'):
                srv = server(mode == 'on')
                try:
                    r = wrk_run(wrk, srv, '/v1/readings', body, a.ingest_seconds, 16)
                    m = srv.metrics()
                finally: srv.stop()
                r['readings_per_s'] = r['rate'] * 1000
                r['passes'] = m.get('iot2ml_scoring_passes_total', 0)
                r['scored'] = m.get('iot2ml_scoring_devices_scored_total', 0)
                ing[mode].append(r)
                print(f"        ingestion, scoring {mode}: {r['readings_per_s']:,.0f} readings/s, p99 "
                      f"{r['p99_us'] / 1e3:.1f} ms, {r['errors']} errors"
                      + (f"; {r['passes']:.0f} passes, {r['scored']:.0f} devices scored" if mode == 'on' else ''),
                      flush=True)
        med = lambda rs, k: statistics.median(r[k] for r in rs)
        sc = scale_case(a, base) if a.devices else None
        if sc:
            off, on = med(sc['off'], 'readings_per_s'), med(sc['on'], 'readings_per_s')
            print(f"median scale case ({a.devices} devices, a new interval every "
                  f"{a.devices * 7 * 3600 // a.step_seconds / off:.1f} s of wall time at the "
                  f"scoring-off rate): ingestion {off:,.0f} readings/s scoring off, {on:,.0f} scoring on (a pass every "
                  f"{a.interval} s): ratio "
                  f"{on / off:.2f} (goal >= 0.8); {med(sc['on'], 'passes'):.0f} passes, "
                  f"{med(sc['on'], 'per_pass'):.0f} devices per pass, "
                  f"{med(sc['on'], 'pass_s'):.2f} s per pass (wall / passes), last pass "
                  f"{med(sc['on'], 'last_pass'):.2f} s; lag interval end -> score "
                  f"p50 {med(sc['on'], 'lag_p50'):.1f} s, p95 {med(sc['on'], 'lag_p95'):.1f} s; intervals behind p50 "
                  f"{med(sc['on'], 'behind_p50'):.0f}, "
                  f"max {med(sc['on'], 'behind_max'):.0f}", flush=True)
        if a.only_scale: return
        off, on = med(ing['off'], 'readings_per_s'), med(ing['on'], 'readings_per_s')
        print(f"median: open loop {a.rate:.0f} req/s -> achieved {med(opens, 'achieved'):.1f} req/s, p50 "
              f"{med(opens, 'p50_ms'):.2f} ms, "
              f"p99 {med(opens, 'p99_ms'):.2f} ms (goal <= 20 ms), errors {sum(o['errors'] for o in opens)}; closed "
              f"loop {med(closed, 'rate'):,.0f} req/s; "
              f"ingestion {off:,.0f} readings/s scoring off, {on:,.0f} scoring on (every {a.interval} s): ratio "
              f"{on / off:.2f} (goal >= 0.8)")
    finally: shutil.rmtree(base, ignore_errors=True)

if __name__ == '__main__':
    if len(sys.argv) > 1 and sys.argv[1] == 'serve':
        sp = argparse.ArgumentParser()
        sp.add_argument('cmd')
        sp.add_argument('root')
        sp.add_argument('--score', action='store_true')
        sp.add_argument('--interval', type=float, default=5.0)
        x = sp.parse_args()
        serve(Path(x.root), x.score, x.interval)
        sys.exit(0)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--runs', type=int, default=3, help="runs; medians are reported")
    ap.add_argument('--rate', type=float, default=200, help="open-loop requests per second")
    ap.add_argument('--seconds', type=int, default=20, help="seconds of open-loop load per run")
    ap.add_argument('--closed-seconds', type=int, default=10, help="seconds of closed-loop (wrk) load per run")
    ap.add_argument('--connections', type=int, default=8, help="wrk connections for the closed loop")
    ap.add_argument('--ingest-seconds', type=int, default=10, help="seconds of ingestion load per mode and run")
    ap.add_argument('--interval', type=float, default=1.0,
                    help="seconds between scoring passes when scoring is on ([scoring] interval; default setting 5)")
    ap.add_argument('--devices', type=int, default=1000, help="devices of the scale case (0: skip it)")
    ap.add_argument('--step-seconds', type=int, default=30,
                    help="scale case: simulated seconds between a sensor's readings (120 per hour at 30)")
    ap.add_argument('--scale-seconds', type=int, default=20,
                    help="scale case: seconds of ingestion load per mode and run")
    ap.add_argument('--scale-bodies', type=int, default=12000,
                    help="scale case: bodies of 1,000 readings prepared (enough for the fastest run)")
    ap.add_argument('--only-scale', action='store_true', help="run only the scale case")
    ap.add_argument('--dir', default=None, help="folder for the temporary projects (default: the system temp dir)")
    main(ap.parse_args())
