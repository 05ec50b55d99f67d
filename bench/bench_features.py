"""Feature cost: the batch feature table and the online features of a scoring pass (each device's newest row from its
241-hour window), for N devices built from the example fleet's hourly aggregates. Median of --runs.

Example:
    python bench/bench_features.py --devices 1000 --runs 3
"""
import argparse, statistics, time
import pandas as pd
from iot2ml.ml.pipeline import example_workspace
from iot2ml.lake.store import Lake
from iot2ml.ml.features import FeatureSpec, online_features

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--devices', type=int, default=1000, help="devices in a pass (copies of the 8 example pumps)")
    ap.add_argument('--runs', type=int, default=3)
    a = ap.parse_args()
    ws = example_workspace('prepare')
    lake = Lake(ws['lake_dir'], ws['reference_dir'], fsync=False)
    agg = lake.aggregate('telemetry', every='3600 seconds', tier='processed')
    spec = FeatureSpec(expected=float(agg['count'].quantile(0.9)))
    agg = agg[agg['ts'] > agg['ts'].max() - spec.history]
    n8 = agg['device_id'].nunique()
    k = -(-a.devices // n8)
    big = pd.concat([agg.assign(device_id=agg['device_id'] + f'-{i}') for i in range(k)], ignore_index=True)
    times = []
    for _ in range(a.runs):
        t0 = time.perf_counter()
        f = online_features(big, spec)
        times.append(time.perf_counter() - t0)
    s = statistics.median(times)
    n = big['device_id'].nunique()
    print(f"online features, {n:,} devices x {spec.history / pd.Timedelta('1h'):.0f} h window ({len(big):,} "
          f"aggregates): "
          f"{s:.2f} s per pass (median of {a.runs}), {n / s:,.0f} devices/s, {len(f.columns)} columns")
    print(f"  at one new interval per device per hour, one core keeps up with ~{n / s * 3600:,.0f} devices")

if __name__ == '__main__': main()
