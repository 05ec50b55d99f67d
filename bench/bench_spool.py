"""Spool throughput: readings/s through `SpooledWriter.append` into durable Parquet, against a bare `pq.write_table`.

Batches of 1,000 readings (a simulated fleet day, as in bench_lake) are built as Arrow tables up front. Each producer
thread appends its share and waits for each acknowledgement (fsync) before the next append, as an HTTP
client would (`--window` lets each keep more in flight). The clock stops when `close()` returns, so
every reading is in fsynced Parquet in the lake. The ceiling is `pq.write_table` of the same rows,
with the lake's write options, then fsync, measured in the same run. Runs use fresh temporary folders
on the same disk as --dir. Prints each run (with its fsync and flush count), the medians and the ratio.

Example:
  python bench/bench_spool.py                          # 1M readings, 1 and 4 producers, 5 runs
  python bench/bench_spool.py --readings 200000 --runs 3 --producers 1 2 4 8
"""
import argparse, json, os, shutil, statistics, tempfile, threading, time
from pathlib import Path
import pyarrow as pa, pyarrow.parquet as pq

from iot2ml.lake.store import Lake
from iot2ml.schema import RAW_SCHEMA
from iot2ml.sim.fleet import FleetSpec, iter_batches
from iot2ml.ingest.spool import SpooledWriter

def make_batches(readings:int, batch:int=1000, seed:int=1) -> list[pa.Table]:
    "The first `readings` readings of one simulated fleet day (about 10,000 per pump), in tables of `batch` rows."
    t = next(iter_batches(FleetSpec(pumps=readings // 10_000 + 1, days=1, seed=seed)))[1].slice(0, readings)
    t = t.cast(RAW_SCHEMA).combine_chunks()
    return [t.slice(i, batch) for i in range(0, t.num_rows, batch)]

def spool_run(batches:list[pa.Table], producers:int, base:Path, window:int, **kw) -> dict:
    lake = Lake(base/'lake')
    w = SpooledWriter(lake, base/'spool', **kw).start()
    errors = []
    def produce(mine):
        try:
            inflight = []
            for t in mine:
                inflight.append(w.append(t))
                if len(inflight) >= window: inflight.pop(0).result()
            for f in inflight: f.result()
        except BaseException as e: errors.append(e)
    ths = [threading.Thread(target=produce, args=(batches[k::producers],)) for k in range(producers)]
    t0 = time.perf_counter()
    for t in ths: t.start()
    for t in ths: t.join()
    acked = time.perf_counter() - t0
    w.close()
    total = time.perf_counter() - t0
    if errors: raise errors[0]
    st = w.stats
    rows = sum(t.num_rows for t in batches)
    assert st['flushed_rows'] == rows, st
    return dict(seconds=total, ack_seconds=acked, readings_per_s=rows / total, fsyncs=st['fsyncs'],
                flushes=st['flushes'],
                appends=st['appended_records'], spool_bytes=st['appended_bytes'])

def ceiling_run(table:pa.Table, base:Path) -> float:
    dest = base/'bare.parquet'
    opts = Lake(base/'x')._write_options(table)
    t0 = time.perf_counter()
    pq.write_table(table, dest, **opts)
    fd = os.open(dest, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    return time.perf_counter() - t0

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--readings', type=int, default=1_000_000, help="readings per run")
    ap.add_argument('--batch', type=int, default=1000, help="readings per append")
    ap.add_argument('--runs', type=int, default=5, help="runs per configuration; the median is reported")
    ap.add_argument('--producers', type=int, nargs='+', default=[1, 4], help="producer thread counts to measure")
    ap.add_argument('--window', type=int, default=1,
                    help="appends each producer keeps in flight (1: wait for each ack)")
    ap.add_argument('--flush-rows', type=int, default=500_000, help="SpooledWriter flush_rows")
    ap.add_argument('--dir', default=None,
                    help="folder for the temporary lakes and spools (default: the system temp dir)")
    a = ap.parse_args()
    batches = make_batches(a.readings, a.batch)
    table = pa.concat_tables(batches).combine_chunks()
    results = {}
    for p in a.producers:
        runs, bare = [], []
        for i in range(a.runs):
            base = Path(tempfile.mkdtemp(prefix='iot2ml-spool-bench-', dir=a.dir))
            try:
                bare.append(table.num_rows / ceiling_run(table, base))
                r = spool_run(batches, p, base, a.window, flush_rows=a.flush_rows)
                runs.append(r)
            finally: shutil.rmtree(base)
            print(f"producers={p} run {i + 1}: {r['readings_per_s']:,.0f} readings/s ({r['seconds']:.2f} s, acks done "
                  f"at "
                  f"{r['ack_seconds']:.2f} s), {r['fsyncs']} fsyncs for {r['appends']} appends, {r['flushes']} "
                  f"flushes; "
                  f"ceiling {bare[-1]:,.0f} readings/s", flush=True)
        med, ceil = statistics.median(r['readings_per_s'] for r in runs), statistics.median(bare)
        results[p] = dict(readings_per_s=med, ceiling_readings_per_s=ceil, ratio=med / ceil,
                          fsyncs=[r['fsyncs'] for r in runs], appends=runs[0]['appends'])
        print(f"producers={p}: spool -> durable Parquet {med:,.0f} readings/s vs pq.write_table {ceil:,.0f} readings/s "
              f"= {med / ceil:.0%} of the ceiling; fsyncs per run {results[p]['fsyncs']} for {runs[0]['appends']} "
              f"appends "
              f"(median of {a.runs}, {a.readings:,} readings in batches of {a.batch:,})", flush=True)
    print(json.dumps(dict(readings=a.readings, batch=a.batch, window=a.window, results=results), indent=1))
