"""HTTP ingestion throughput: readings/s through `POST /v1/readings` of a real `iot2ml serve` (one uvicorn worker) into
durable Parquet.

Each run makes a fresh temporary project (iot2ml.toml, a device registered with `Registry.add` for its token), starts
`iot2ml serve` on a free loopback port and drives it for `--seconds` with `wrk` (C, keep-alive, `--connections`
connections) posting one fixed JSON body of `--batch` long readings of that device (`--sensors` sensors, timestamps as
ISO 8601 strings with a zone, or epoch seconds with `--ts epoch`). Accepted readings are the 200 responses times the
batch; readings/s is that over wrk's measured duration. Then the server is stopped with SIGTERM (which lands every
acknowledged reading as Parquet) and the count in the lake (`Lake.sql`) must be at least what wrk saw accepted (and at
most one batch per connection more: requests in flight when wrk stops). p50/p99 are wrk's request latencies.

The ceiling, measured in the same run: `pa.Table.from_pylist` of the same rows (the body decoded again and again, to
`--ceiling-rows` dicts) plus `pq.write_table` with the lake's write options and an fsync. Prints each run, the medians
of `--runs` runs and the ratio. `wrk` is installed with apt-get when missing (needs root).

Example:
  python bench/bench_http.py                          # 3 runs of 10 s, 16 connections, ISO timestamps
  python bench/bench_http.py --runs 1 --seconds 5 --connections 32 --ts epoch
"""
import argparse, json, os, shutil, signal, statistics, subprocess, sys, tempfile, time
from pathlib import Path
import orjson, pandas as pd, pyarrow as pa, pyarrow.parquet as pq

from iot2ml.lake.store import Lake
from iot2ml.ingest.devices import Registry

BIN = Path(sys.executable).parent
sys.path.insert(0, str(Path(__file__).resolve().parents[1]/'tests'))
from helpers import free_port   # noqa: E402  (shared with the tests)
DEVICE = 'pump-0001'

def ensure_wrk() -> str:
    "The path of wrk, installing Debian's package when it is missing."
    if shutil.which('wrk'): return shutil.which('wrk')
    if os.geteuid() != 0: sys.exit("wrk is not installed and this is not root; run: sudo apt-get install -y wrk")
    print("installing wrk (apt-get install -y wrk) ...", flush=True)
    subprocess.run(['apt-get', 'update', '-qq'], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(['apt-get', 'install', '-y', '-qq', 'wrk'], check=True, stdout=subprocess.DEVNULL,
                   env=os.environ | {'DEBIAN_FRONTEND': 'noninteractive'})
    return shutil.which('wrk')

def make_body(batch:int, sensors:int, ts:str) -> bytes:
    ("`batch` long readings of one device: `sensors` sensors at consecutive minutes, ending a day ago (inside the "
     "accepted time range).")
    t0 = pd.Timestamp.now(tz='UTC').floor('D') - pd.Timedelta('1D') - pd.Timedelta(minutes=batch // sensors + 1)
    recs = []
    for i in range(batch):
        t = t0 + pd.Timedelta(minutes=i // sensors)
        recs.append({'device_id': DEVICE, 'ts': t.strftime('%Y-%m-%dT%H:%M:%SZ') if ts == 'iso' else int(t.timestamp()),
                     'sensor': f'sensor_{i % sensors:02d}', 'value': round(20 + (i * 7919 % 1000) / 37, 3)})
    return orjson.dumps(recs)

CONFIG = """[ingest]
port = {port}
rate_limit = 1e12
rate_burst = 1e12
max_body_bytes = 67108864
{extra}"""

class Server:
    "`iot2ml serve` in a fresh project under `base`."
    def __init__(self, base:Path, extra:str=''):
        self.root, self.port = base, free_port()
        (base/'iot2ml.toml').write_text(CONFIG.format(port=self.port, extra=extra))
        reg = Registry(base/'state'/'registry.sqlite')
        self.token = reg.add(DEVICE, type='pump', site='bench').token
        self.admin = reg.add_admin('bench').token   # /metrics spans every device: admin tokens only
        self.url = f'http://127.0.0.1:{self.port}'
    def start(self) -> 'Server':
        import httpx
        self.log = open(self.root/'serve.log', 'ab')
        self.proc = subprocess.Popen([str(BIN/'iot2ml'), 'serve', '--log-level', 'warning'], cwd=self.root,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        for _ in range(400):
            try:
                if httpx.get(self.url + '/healthz', timeout=0.5).status_code == 200: return self
            except httpx.HTTPError: pass
            if self.proc.poll() is not None: break
            time.sleep(0.05)
        raise RuntimeError(f"iot2ml serve did not start: {(self.root/'serve.log').read_text()[-2000:]}")
    def metrics(self) -> dict:
        import httpx
        txt = httpx.get(self.url + '/metrics', headers={'Authorization': f'Bearer {self.admin}'}, timeout=10).text
        return {l.split()[0]: float(l.split()[1]) for l in txt.splitlines() if l and not l.startswith('#')}
    def stop(self) -> float:
        "SIGTERM (the service lands everything acknowledged) and wait; returns the seconds it took."
        t0 = time.perf_counter()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(120)
        self.log.close()
        return time.perf_counter() - t0

LUA = """
local f = io.open(%s, "rb"); local body = f:read("*a"); f:close()
wrk.method = "POST"; wrk.body = body
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %s"
done = function(summary, latency, requests)
  io.write(string.format('\\nRESULT {"requests":%%d,"duration_us":%%d,"status_errors":%%d,"connect_errors":%%d,'
    .. '"read_errors":%%d,"write_errors":%%d,"timeouts":%%d,"p50_us":%%d,"p90_us":%%d,"p99_us":%%d,"max_us":%%d}\\n',
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""

def wrk_run(wrk:str, srv:Server, body_path:Path, seconds:float, connections:int, threads:int) -> dict:
    script = srv.root/'post.lua'
    script.write_text(LUA % (json.dumps(str(body_path)), srv.token))
    p = subprocess.run([wrk, f'-t{threads}', f'-c{connections}', f'-d{max(1, round(seconds))}s', '--timeout', '30s',
                        '-s', str(script),
                        srv.url + '/v1/readings'], capture_output=True, text=True)
    line = [l for l in p.stdout.splitlines() if l.startswith('RESULT ')]
    if p.returncode or not line: raise RuntimeError(f"wrk failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return json.loads(line[-1][7:])

def http_run(wrk:str, body:bytes, batch:int, base:Path, seconds:float, connections:int, threads:int,
             extra:str='') -> dict:
    srv = Server(base, extra).start()
    body_path = base/'body.json'
    body_path.write_bytes(body)
    try:
        r = wrk_run(wrk, srv, body_path, seconds, connections, threads)
        m = srv.metrics()
    finally: stop_s = srv.stop()
    ok = r['requests'] - r['status_errors']
    accepted = ok * batch
    secs = r['duration_us'] / 1e6
    lake = int(Lake(base/'data'/'lake').sql("SELECT count(*) AS n FROM raw.telemetry")['n'][0])
    assert accepted <= lake <= accepted + connections * batch, (f"wrk saw {accepted:,} readings accepted, the lake "
                                                                f"holds {lake:,}")
    return dict(readings_per_s=accepted / secs, lake_readings=lake, accepted=accepted, seconds=secs,
                requests=r['requests'],
                errors=r['status_errors'] + r['connect_errors'] + r['read_errors'] + r['write_errors'] + r['timeouts'],
                p50_ms=r['p50_us'] / 1e3, p90_ms=r['p90_us'] / 1e3, p99_ms=r['p99_us'] / 1e3, max_ms=r['max_us'] / 1e3,
                fsyncs=int(m.get('iot2ml_fsyncs_total', 0)), stop_seconds=stop_s)

def ceiling_run(rows:list[dict], base:Path) -> float:
    "Readings/s of `pa.Table.from_pylist(rows)` + `pq.write_table` (the lake's write options) + fsync."
    dest = base/'ceiling.parquet'
    t0 = time.perf_counter()
    t = pa.Table.from_pylist(rows)
    pq.write_table(t, dest, **Lake(base/'x')._write_options(t))
    fd = os.open(dest, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    return len(rows) / (time.perf_counter() - t0)

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--runs', type=int, default=3, help="runs; the median is reported")
    ap.add_argument('--seconds', type=int, default=10, help="seconds of load per run")
    ap.add_argument('--connections', type=int, default=16, help="wrk keep-alive connections")
    ap.add_argument('--threads', type=int, default=1, help="wrk threads")
    ap.add_argument('--batch', type=int, default=1000, help="readings per request body")
    ap.add_argument('--sensors', type=int, default=10, help="sensors in the body (readings per timestamp)")
    ap.add_argument('--ts', choices=['iso', 'epoch'], default='iso',
                    help="timestamps as ISO 8601 strings with 'Z', or epoch seconds")
    ap.add_argument('--ceiling-rows', type=int, default=1_000_000,
                    help="rows for the from_pylist + write_table ceiling")
    ap.add_argument('--lake-only', action='store_true',
                    help="readings go to the lake only, not to latest state (default_to = [\"lake\"]): "
                         "to see what latest state costs")
    ap.add_argument('--dir', default=None, help="folder for the temporary projects (default: the system temp dir)")
    ap.add_argument('--json', action='store_true', help="also print the result as one JSON line")
    a = ap.parse_args()
    wrk = ensure_wrk()
    body = make_body(a.batch, a.sensors, a.ts)
    # fresh objects, as decoded
    rows = [r for _ in range(-(-a.ceiling_rows // a.batch)) for r in orjson.loads(body)][:a.ceiling_rows]
    print(f"body: {a.batch:,} readings, {len(body):,} bytes, ts {a.ts}{'; lake only' if a.lake_only else ''}; wrk "
          f"-t{a.threads} -c{a.connections} -d{max(1, round(a.seconds))}s; {a.runs} runs", flush=True)
    runs, ceil = [], []
    # warm-up (allocator, page cache)
    with tempfile.TemporaryDirectory(dir=a.dir) as d: ceiling_run(rows[:len(rows) // 4], Path(d))
    for i in range(a.runs):
        base = Path(tempfile.mkdtemp(prefix='iot2ml-http-bench-', dir=a.dir))
        try:
            ceil.append(ceiling_run(rows, base))
            r = http_run(wrk, body, a.batch, base, a.seconds, a.connections, a.threads,
                         'default_to = ["lake"]\n' if a.lake_only else '')
            runs.append(r)
        finally: shutil.rmtree(base, ignore_errors=True)
        print(f"run {i + 1}: {r['readings_per_s']:,.0f} readings/s ({r['requests']:,} requests in {r['seconds']:.1f} "
              f"s, {r['errors']} errors, "
              f"{r['fsyncs']:,} fsyncs), p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms; lake "
              f"{r['lake_readings']:,} readings "
              f"(landed {r['stop_seconds']:.1f} s after the load); ceiling {ceil[-1]:,.0f} rows/s", flush=True)
    med = lambda k: statistics.median(r[k] for r in runs)
    rate, c = med('readings_per_s'), statistics.median(ceil)
    print(f"median: {rate:,.0f} readings/s, p50 {med('p50_ms'):.1f} ms, p99 {med('p99_ms'):.1f} ms; "
          f"ceiling (from_pylist + write_table) {c:,.0f} rows/s; ratio {rate / c:.2f}")
    if a.json: print(json.dumps(dict(readings_per_s=rate, p50_ms=med('p50_ms'), p99_ms=med('p99_ms'), ceiling=c,
                                     ratio=rate / c, runs=runs)))
