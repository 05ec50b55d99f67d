"""Anomaly detector quality and speed: make_detector('auto') against a plain sklearn IsolationForest baseline.

Quality: (a) every NAB realKnownCause recording: fit on the first N rows (N = --nfit, or the rows before the first
labelled window if fewer), predict the rest; (b) a simulated fleet: per pump, fit on its first --fit-days of normal
operation (fewer if a fault starts earlier; pumps with < 150 normal rows are skipped), predict the rest; truth = the
fault windows of fault_schedule (onset to repair, or to the end). Reported: point-wise F1, false-alarm rate,
missed-alarm rate, NAB standard score (per recording, normalised 0 = never fires, 100 = perfect), per recording and mean.
Baseline: sklearn IsolationForest with default parameters on the raw values (NaN filled with the fit median), flag =
its own predict() == -1 (contamination='auto'), no smoothing.
Speed: fit and predict rows/s on 100k rows x 10 columns (median of --runs runs), and score_last latency.

Example: python bench/bench_detect.py --nab ../shared/data/nab --pumps 12 --days 30
"""
import argparse, json, time, warnings
from pathlib import Path
import numpy as np, pandas as pd
from sklearn.ensemble import IsolationForest
from iot2ml.detect import make_detector
from iot2ml.evaluate import detection_metrics, nab_score, windows_to_labels
import iot2ml.simulate as S, iot2ml.schema as SC


class IForestBaseline:
    "Plain sklearn IsolationForest, default params; flag = predict() == -1 (contamination='auto')."
    def fit(self, X):
        self.med = X.median(); self.f = IsolationForest(random_state=0).fit(X.fillna(self.med).fillna(0)); return self
    def predict(self, X):
        return pd.Series((self.f.predict(X.fillna(self.med).fillna(0)) == -1).astype(int), index=X.index)


DETECTORS = {'auto': lambda: make_detector('auto'), 'iforest_baseline': IForestBaseline}


def score(det, fit, test, wins):
    p = det().fit(fit).predict(test)
    m = detection_metrics(windows_to_labels(test.index, wins), p)
    return dict(f1=m['f1'], far=m['false_alarm_rate'], mar=m['missed_alarm_rate'], nab=nab_score(p, wins),
                windows=f"{m['windows_detected']}/{m['windows']}")


def nab_rows(root:Path, nfit:int):
    wins = json.loads((root / 'realKnownCause_windows.json').read_text())
    for name, w in wins.items():
        df = pd.read_csv(root / name, parse_dates=['timestamp'], index_col='timestamp')
        n = min(nfit, int((df.index < min(pd.Timestamp(a) for a, _ in w)).sum()))
        yield Path(name).stem, df.iloc[:n], df.iloc[n:], w


def fleet_rows(pumps:int, days:int, fit_days:float, seed:int):
    spec = S.FleetSpec(pumps=pumps, days=days, freq='5min', seed=seed)
    wide, fs = SC.to_wide(S.simulate(spec)), S.fault_schedule(spec)
    end = pd.Timestamp(spec.start, tz='UTC') + pd.Timedelta(days=days); nfit = int(fit_days * 288)
    for dev, g in wide.groupby(level=0):
        g = g.droplevel(0); f = fs[fs.device_id == dev]
        w = [(a, b if pd.notna(b) else end) for a, b in zip(f.onset, f.repaired)]
        n = min(nfit, int((g.index < min([a for a, _ in w], default=end)).sum()))
        if n >= 150: yield dev, g.iloc[:n], g.iloc[n:], w


def table(rows, title):
    out = []
    for name, fit, test, w in rows:
        r = {'recording': name, 'fit rows': len(fit), 'rows': len(test)}
        for k, d in DETECTORS.items():
            s = score(d, fit, test, w)
            r |= {f'{k} {m}': v for m, v in s.items()}
        out.append(r)
    df = pd.DataFrame(out)
    num = [c for c in df.columns if df[c].dtype.kind == 'f' and c not in ('fit rows', 'rows')]
    mean = df[num].mean().to_dict() | {'recording': 'MEAN'}
    df = pd.concat([df, pd.DataFrame([mean])], ignore_index=True)
    print(f"\n## {title}\n"); print(df.to_markdown(index=False, floatfmt='.3f') if hasattr(df, 'to_markdown') else df.to_string())
    return df


def speed(runs:int):
    rng = np.random.default_rng(0); n, d = 100_000, 10
    X = pd.DataFrame(np.cumsum(rng.normal(size=(n, d)), 0) * 0.01 + rng.normal(size=(n, d)),
                     index=pd.date_range('2024-01-01', periods=n, freq='1min'), columns=[f's{i}' for i in range(d)])
    fit = X.iloc[:500]
    res = {}
    for name, mk in (('auto', lambda: make_detector('auto')), ('iforest_baseline', IForestBaseline)):
        tf, tp = [], []
        for _ in range(runs):
            t = time.perf_counter(); det = mk().fit(fit); tf.append(time.perf_counter() - t)
            t = time.perf_counter(); det.predict(X); tp.append(time.perf_counter() - t)
        res[name] = (np.median(tf), np.median(tp))
        print(f"{name}: fit 500 rows {np.median(tf):.3f} s ({500/np.median(tf):,.0f} rows/s); "
              f"predict 100k x 10 {np.median(tp):.3f} s ({n/np.median(tp):,.0f} rows/s)")
    det = make_detector('auto').fit(fit); lat = []
    for _ in range(max(runs, 5) * 4):
        t = time.perf_counter(); det.score_last(X.iloc[:5000]); lat.append(time.perf_counter() - t)
    print(f"auto score_last (one device, last row, from a 5,000-row history): median {np.median(lat)*1e3:.1f} ms")
    print(f"predict ratio auto/baseline: {res['auto'][1]/res['iforest_baseline'][1]:.2f}x the baseline's time")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--nab', default=str(Path(__file__).resolve().parents[1].parent / 'shared/data/nab'), help='NAB folder (realKnownCause/, realKnownCause_windows.json)')
    ap.add_argument('--nfit', type=int, default=500, help='fit rows per NAB recording (at most; fewer if a window starts earlier)')
    ap.add_argument('--pumps', type=int, default=12); ap.add_argument('--days', type=int, default=30)
    ap.add_argument('--fit-days', type=float, default=2.0, help='days of normal operation each pump is fit on')
    ap.add_argument('--seed', type=int, default=7); ap.add_argument('--runs', type=int, default=3)
    a = ap.parse_args()
    warnings.simplefilter('ignore')
    root = Path(a.nab)
    if (root / 'realKnownCause_windows.json').exists(): table(nab_rows(root, a.nfit), f'NAB realKnownCause (fit <= {a.nfit} rows)')
    else: print(f"no NAB data at {root}: pass --nab DIR (skipping part a)")
    table(fleet_rows(a.pumps, a.days, a.fit_days, a.seed), f'Simulated fleet ({a.pumps} pumps, {a.days} days, 5 min, seed {a.seed}, fit {a.fit_days} days)')
    print('\n## Speed\n'); speed(a.runs)


if __name__ == '__main__':
    main()
