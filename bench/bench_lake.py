"""Lake benchmarks: write throughput against a bare pyarrow write, and hourly aggregates against plain pandas.

Prints medians of --runs runs and the ratios the issue asks for; each query variant runs in a fresh
process so its peak memory (max RSS) is its own.

Example:
  python bench/bench_lake.py                   # 5 runs, 30M readings for the query benchmark
  python bench/bench_lake.py --runs 3 --pumps 20 --days 10
"""
import argparse, json, os, resource, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path
import pyarrow as pa, pyarrow.parquet as pq

from iot2ml.lake.store import Lake
from iot2ml.sim.fleet import FleetSpec, iter_batches
from iot2ml.ml.pipeline import simulate_to_lake

def write_bench(runs:int, pumps:int) -> dict:
    "Lake.land (split by date, atomic, fsync, marker, catalog) vs pq.write_table of the same rows and options."
    table = next(iter_batches(FleetSpec(pumps=pumps, days=1, seed=1)))[1]
    base = Path(tempfile.mkdtemp(prefix='iot2ml-bench-'))
    lake_t, bare_t = [], []
    try:
        opts = Lake(base/'x')._write_options(table)
        for i in range(runs):
            t0 = time.perf_counter()
            pq.write_table(table, base/f'bare{i}.parquet', **opts)
            bare_t.append(time.perf_counter() - t0)
            lake = Lake(base/f'lake{i}')
            t0 = time.perf_counter()
            lake.land(table, f'b{i}')
            lake_t.append(time.perf_counter() - t0)
    finally: shutil.rmtree(base)
    n = table.num_rows
    lake_rps, bare_rps = n / statistics.median(lake_t), n / statistics.median(bare_t)
    return dict(rows=n, lake_readings_per_s=lake_rps, bare_write_table_readings_per_s=bare_rps,
                ratio=lake_rps / bare_rps)

QUERY = r"""
import json, resource, sys, time
from pathlib import Path
variant, lake_dir = sys.argv[1], sys.argv[2]
import pandas as pd, psutil
from iot2ml.lake.store import Lake
base_rss = psutil.Process().memory_info().rss / 2**30
t0 = time.perf_counter()
if variant == 'lake':
    out = Lake(lake_dir).aggregate('telemetry', every='1 hour', tier='processed')
else:
    files = sorted(Path(lake_dir, 'processed', 'telemetry').glob('date=*/*.parquet'))
    df = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    df['hour'] = df['ts'].dt.floor('1h')
    stats = ['mean', 'min', 'max', 'std', 'last', 'count']   # files are sorted by ts: last = newest
    out = df.groupby(['device_id', 'sensor', 'hour'])['value'].agg(stats).reset_index()
dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(json.dumps(dict(seconds=dt, rows=len(out), peak_rss_gib=peak, query_gib=peak - base_rss)))
"""

def query_bench(runs:int, pumps:int, days:float) -> dict:
    "Per-device hourly aggregates: iot2ml.lake.store (DuckDB) vs pandas reading the same Parquet files."
    d = Path(tempfile.mkdtemp(prefix='iot2ml-bench-q-'))
    try:
        lake = Lake(d/'lake', fsync=False)
        landed = simulate_to_lake(FleetSpec(pumps=pumps, days=days, seed=5), lake, progress=True)
        res = {}
        for variant in ('lake', 'pandas'):
            rs = [json.loads(subprocess.run([sys.executable, '-c', QUERY, variant, str(lake.root)], capture_output=True,
                                            text=True,
                                            check=True).stdout.strip().splitlines()[-1]) for _ in range(runs)]
            res[variant] = dict(seconds=statistics.median(r['seconds'] for r in rs),
                                peak_rss_gib=max(r['peak_rss_gib'] for r in rs),
                                query_gib=max(r['query_gib'] for r in rs), rows=rs[0]['rows'])
        assert res['lake']['rows'] == res['pandas']['rows'], res
        rows = lake.catalog().set_index(['tier', 'name']).loc[('processed', 'telemetry'), 'rows']
        return dict(readings=int(rows), lake=res['lake'], pandas=res['pandas'],
                    speedup=res['pandas']['seconds'] / res['lake']['seconds'])
    finally: shutil.rmtree(d)

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--runs', type=int, default=5, help="runs per measurement; the median is reported")
    ap.add_argument('--pumps', type=int, default=100,
                    help="pumps in the query benchmark (100 x 30 days x 1 min x 7 sensors = 30M readings)")
    ap.add_argument('--days', type=float, default=30)
    ap.add_argument('--write-pumps', type=int, default=500,
                    help="pumps in the write benchmark batch (one day: 500 -> 5M readings)")
    a = ap.parse_args()
    w = write_bench(a.runs, a.write_pumps)
    print(f"lake write: {w['rows']:,} readings; Lake.land {w['lake_readings_per_s']:,.0f} readings/s vs bare "
          f"pq.write_table "
          f"{w['bare_write_table_readings_per_s']:,.0f} readings/s = {w['ratio']:.0%} of the ceiling (median of "
          f"{a.runs})")
    q = query_bench(a.runs, a.pumps, a.days)
    print(f"hourly aggregates over {q['readings']:,} readings: iot2ml.lake.store {q['lake']['seconds']:.2f} s (peak "
          f"RSS {q['lake']['peak_rss_gib']:.2f} GiB, "
          f"{q['lake']['query_gib']:.2f} above the imports), pandas {q['pandas']['seconds']:.2f} s (peak RSS "
          f"{q['pandas']['peak_rss_gib']:.2f} GiB, "
          f"{q['pandas']['query_gib']:.2f} above the imports): {q['speedup']:.1f}x faster (median of {a.runs})")
    print(json.dumps(dict(write=w, query=q), indent=1))
