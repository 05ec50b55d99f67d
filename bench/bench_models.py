"""The failure model against the naive one-sensor baseline on the demo lake (50 pumps x 30 days).

Reads build/features/features.parquet and build/prepared/maintenance.parquet (building them from data/ with the
pipeline functions if missing), trains with params.yaml's train section on the training period, and reports on
the held-out test period: PR-AUC, failures caught, mean lead time, false alarms per device-month, event cost;
training time (median of --fits) and batch scoring rows/s (median of --scores), with ratios to the baseline.

Example:
  python bench/bench_models.py --fits 3 --scores 5
"""
import argparse, statistics, tempfile, time
from pathlib import Path
import pandas as pd

from iot2ml.ml import pipeline
from iot2ml.config import load_params
from iot2ml.lake.store import Lake
from iot2ml.ml.models import FailureModel, ThresholdBaseline, time_split

ROOT = Path(__file__).resolve().parents[1]

def tables(root:Path, p) -> tuple[pd.DataFrame, pd.DataFrame]:
    feats, prep = root/'build'/'features', root/'build'/'prepared'
    if not (feats/'features.parquet').exists():
        if not (root/'data'/'lake').exists(): raise SystemExit(f"no demo lake in {root/'data'}; run `make demo` first")
        prep, feats = Path(tempfile.mkdtemp())/'prepared', Path(tempfile.mkdtemp())/'features'
        pipeline.prepare(Lake(root/'data'/'lake', root/'data'/'reference', fsync=False), prep, p.prepare)
        pipeline.features(prep, feats, p.features)
    return pd.read_parquet(feats/'features.parquet'), pd.read_parquet(prep/'maintenance.parquet')

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--root', type=Path, default=ROOT, help="project folder with build/ (or data/) of the demo")
    ap.add_argument('--fits', type=int, default=3)
    ap.add_argument('--scores', type=int, default=5)
    a = ap.parse_args()
    p = load_params(a.root/'params.yaml')
    t, h = p.train, p.features.horizon_hours
    f, log = tables(a.root, p)
    split = time_split(f, t.test_fraction, pd.Timedelta(hours=h))
    train, test = f[split.train], f[split.test]
    params = dict(learning_rate=t.learning_rate, max_iter=t.max_iter, max_leaf_nodes=t.max_leaf_nodes,
                  min_samples_leaf=t.min_samples_leaf, l2_regularization=t.l2_regularization, random_state=t.seed)
    fits = []
    for i in range(a.fits):
        t0 = time.perf_counter()
        m = FailureModel(params=params, horizon=f"{h}h", threshold=t.threshold, folds=t.cv_folds,
                         calibration=t.calibration,
                         cost_false_alarm=t.cost_false_alarm,
                         cost_missed_failure=t.cost_missed_failure).fit(train, known_until=split.cutoff)
        fits.append(time.perf_counter() - t0)
        print(f"fit {i + 1}: {fits[-1]:.1f} s", flush=True)
    base = ThresholdBaseline(f"{p.evaluate.baseline_sensor}_mean", p.evaluate.baseline_quantile).fit(train)
    costs = (m.cost_false_alarm, m.cost_missed_failure)
    res = {name: pipeline._scores(est, test, log, pd.Timedelta(hours=h), costs)[0] for name,
           est in (('model', m), ('baseline', base))}
    big = pd.concat([test] * max(1, 100_000 // len(test)))
    rate = {}
    for name, est in (('model', m), ('baseline', base)):
        runs = []
        for _ in range(a.scores):
            t0 = time.perf_counter()
            est.predict_proba(big)
            est.predict(big)
            runs.append(time.perf_counter() - t0)
        rate[name] = len(big) / statistics.median(runs)
    print(f"\n{len(f['label'])} rows, {f.index.get_level_values('device_id').nunique()} devices; test period "
          f"{test.index.get_level_values('ts').min()} "
          f"to {test.index.get_level_values('ts').max()} ({len(test)} rows, {res['model']['failures']} failures)")
    rows = ['pr_auc', 'caught', 'mean_lead_hours', 'false_alarms', 'false_alarms_per_device_month', 'cost']
    tab = pd.DataFrame({k: [res[k][r] for r in rows] for k in res}, index=rows)
    tab['model / baseline'] = tab['model'] / tab['baseline']
    print(tab.round(3).to_string())
    print(f"alert level {m.threshold:.3f} ({m.calibration}), costs {costs[0]:g} per false alarm, {costs[1]:g} per "
          f"missed failure")
    print(f"training (CV {m.folds}x{m.groups} folds + calibration + classifier + RUL regressor, {len(train)} rows, "
          f"{len(m.features)} features): "
          f"median {statistics.median(fits):.1f} s of {a.fits}")
    print(f"batch scoring ({len(big)} rows, risk + alert): model {rate['model']:,.0f} rows/s, baseline "
          f"{rate['baseline']:,.0f} rows/s "
          f"(ratio {rate['model'] / rate['baseline']:.3f}), median of {a.scores}")
