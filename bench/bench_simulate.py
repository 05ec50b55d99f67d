"""Benchmark the pump-fleet simulator: readings generated per second, and peak memory.

Generation only: every batch of `iot2ml.sim.fleet.iter_batches` is consumed, nothing is written.
The ceiling, measured in the same run, is the cost of emitting the same number of rows as Arrow
tables of the same schema with random values and no physics, faults or messiness: the simulator's
figure over it says how much the simulation itself costs.

Example:
    python bench/bench_simulate.py                   # 500 pumps x 30 days at 1-minute resolution, median of 5 runs
    python bench/bench_simulate.py --pumps 50 --days 7 --runs 3
"""
import argparse, resource, statistics, time

import numpy as np, pyarrow as pa, psutil

from iot2ml.sim.fleet import FleetSpec, SCHEMA, SENSORS, UNITS, device_ids, iter_batches


def run(spec: FleetSpec) -> tuple[float, int, int]:
    "Seconds, readings and batches of one full generation of `spec`."
    t0, n, b = time.perf_counter(), 0, 0
    for _, table in iter_batches(spec):
        n += table.num_rows
        b += 1
    return time.perf_counter() - t0, n, b


def ceiling(pumps: int, steps: int, days: int) -> float:
    "Seconds to emit `days` tables of pumps x steps x sensors random readings in the simulator's schema."
    rng, names = np.random.default_rng(0), pa.array(device_ids(pumps))
    sensors, units = pa.array(SENSORS), pa.array([UNITS[s] for s in SENSORS])
    n = pumps*steps*len(SENSORS)
    t0 = time.perf_counter()
    for d in range(days):
        ts = np.repeat(np.arange(steps*pumps, dtype=np.int64)//pumps*60_000_000 + d*86_400_000_000, len(SENSORS))
        sen = pa.array(np.tile(np.arange(len(SENSORS), dtype=np.int8), steps*pumps))
        dev = np.repeat(np.tile(np.arange(pumps, dtype=np.int32), steps), len(SENSORS))
        tsa = pa.array(ts.view('M8[us]'), type=SCHEMA.field('ts').type)
        pa.Table.from_arrays([pa.DictionaryArray.from_arrays(dev, names).cast(pa.string()), tsa, sensors.take(sen),
                              pa.array(rng.standard_normal(n)), units.take(sen), pa.array(np.zeros(n, np.uint8)), tsa],
                             schema=SCHEMA)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0], epilog='example:' + __doc__.split('Example:')[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--pumps', type=int, default=500, help='pumps in the fleet (default: 500)')
    ap.add_argument('--days', type=float, default=30, help='days of history (default: 30)')
    ap.add_argument('--freq', default='1min', help="sampling interval (default: '1min')")
    ap.add_argument('--runs', type=int, default=5, help='runs; the median is reported (default: 5)')
    args = ap.parse_args()
    spec = FleetSpec(pumps=args.pumps, days=args.days, freq=args.freq)
    base = psutil.Process().memory_info().rss
    print(f"simulate {spec.pumps} pumps x {spec.days:g} days at {spec.freq} (seed {spec.seed}), {args.runs} runs")
    secs = []
    for i in range(args.runs):
        s, n, b = run(spec)
        secs.append(s)
        print(f"  run {i+1}: {s:6.2f} s  {n/s/1e6:6.2f} M readings/s  ({n:,} readings, {b} batches)")
    med = statistics.median(secs)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss*1024   # Linux: KiB
    print(f"median: {med:.2f} s, {n/med/1e6:.2f} M readings/s; peak RSS {peak/2**30:.2f} GiB "
          f"(before generation {base/2**30:.2f} GiB)")
    if args.freq == '1min' and args.days == int(args.days):
        c = ceiling(spec.pumps, 1440, int(args.days))
        print(f"ceiling (random readings as Arrow tables, no simulation): {spec.pumps*1440*args.days*7/c/1e6:.2f} M "
              f"rows/s; "
              f"the simulator runs at {c/med:.2f} of it")


if __name__ == '__main__':
    main()
