"""Anomaly detector quality and speed: make_detector('auto') against a plain sklearn IsolationForest baseline.

Quality: (a) every NAB realKnownCause recording: fit on the first N rows (N = --nfit, or the rows before the first
labelled window if fewer), predict the rest; (b) a simulated fleet: per pump, fit on its first --fit-days of normal
operation (fewer if a fault starts earlier; pumps with < 150 normal rows are skipped), predict the rest; truth = the
fault windows of fault_schedule (onset to repair, or to the end); (c) a synthetic multivariate testbed (`testbed`): 6-8
correlated sensors driven by latent load, speed and ambient temperature, with noise, drift and load cycles, and 2-3 long
faults each (a relationship break inside the sensors' ranges, a level shift, growing vibration noise, a slow ramp),
fit on the first 400 rows. Reported: point-wise F1, false-alarm rate,
missed-alarm rate, NAB standard score (per recording, normalised 0 = never fires, 100 = perfect), per recording and the
mean (F1, MAR and NAB over recordings with a labelled window, FAR over all), then the mean of the three families.
Baseline: sklearn IsolationForest with default parameters on the raw values (NaN filled with the fit median), flag =
its own predict() == -1 (contamination='auto'), no smoothing.
Speed: fit and predict rows/s on 100k rows x 10 columns (median of --runs runs), and score_last latency.

Example: python bench/bench_detect.py --nab ../shared/data/nab --pumps 12 --days 30
"""
import argparse, json, time, warnings
from pathlib import Path
import numpy as np, pandas as pd
from scipy import signal
from sklearn.ensemble import IsolationForest
from iot2ml.ml.detect import make_detector
from iot2ml.ml.evaluate import detection_metrics, nab_score, windows_to_labels
import iot2ml.sim.fleet as S, iot2ml.schema as SC


class IForestBaseline:
    "Plain sklearn IsolationForest, default params; flag = predict() == -1 (contamination='auto')."
    def fit(self, X):
        self.med = X.median()
        self.f = IsolationForest(random_state=0).fit(X.fillna(self.med).fillna(0))
        return self
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
    end = pd.Timestamp(spec.start, tz='UTC') + pd.Timedelta(days=days)
    nfit = int(fit_days * 288)
    for dev, g in wide.groupby(level=0):
        g = g.droplevel(0)
        f = fs[fs.device_id == dev]
        w = [(a, b if pd.notna(b) else end) for a, b in zip(f.onset, f.repaired)]
        n = min(nfit, int((g.index < min([a for a, _ in w], default=end)).sum()))
        if n >= 150: yield dev, g.iloc[:n], g.iloc[n:], w


FAULTS = ('relationship', 'level', 'variance', 'ramp')


def testbed(seed:int, n:int|None=None):
    """One synthetic machine: 6-8 sensors driven by 2-3 latent operating variables (load with a daily cycle, speed,
    ambient temperature) plus noise, slow drift and a lagged temperature; 2-3 long faults (regime changes) after the fit
    rows. Returns (frame, windows, fault kinds)."""
    rng = np.random.default_rng(10_000 + seed)
    n = n or int(rng.integers(3000, 9000))
    freq = ['10s', '1min', '5min'][seed % 3]
    t = np.arange(n)
    per = rng.uniform(100, 400)   # load cycle (a shift, a batch, a day) in rows: the fit rows see 1-4 of them
    ar = lambda tau, sd: signal.lfilter([np.sqrt(1 - np.exp(-2 / tau)) * sd], [1, -np.exp(-1 / tau)],
                                        rng.normal(size=n))
    load = 0.6 + 0.25 * np.sin(2 * np.pi * t / per + rng.uniform(0, 6)) + ar(rng.uniform(20, 200), 0.08)
    speed = 1 + 0.1 * np.sign(np.sin(2 * np.pi * t / (per * rng.uniform(0.3, 2)))) + ar(50, 0.02)
    amb = 20 + 3 * np.sin(2 * np.pi * t / (per * 1.3)) + np.cumsum(rng.normal(0, 0.005, n))
    d = int(rng.integers(6, 9))
    X = {}
    X['current'] = 40 + 30 * load * speed + rng.normal(0, 0.8, n)
    X['flow'] = 100 * load * speed + rng.normal(0, 1.5, n)
    X['pressure'] = 2 + 3 * (load * speed) ** 2 + rng.normal(0, 0.08, n)
    X['temperature'] = 30 + 0.6 * amb + signal.lfilter([0.02], [1, -0.98], 25 * load,
                                                       zi=[25 * load[0] * 0.98])[0] + rng.normal(0, 0.2, n)
    X['vibration'] = np.abs(0.5 * speed + 0.3 * load * rng.normal(1, 0.25, n))
    X['voltage'] = 400 - 2 * load + rng.normal(0, 0.5, n)
    if d > 6: X['speed'] = 1500 * speed + rng.normal(0, 5, n)
    if d > 7: X['outlet_temp'] = amb + 4 * load + rng.normal(0, 0.15, n)
    X = pd.DataFrame(X)
    X += X.std().to_numpy() * rng.normal(0, 0.2, X.shape[1]) * t[:, None] / n   # slow drift
    sd = X.iloc[:400].std().to_numpy()
    # faults: 2-3 non-overlapping long windows after row 600
    k = int(rng.integers(2, 4))
    wins, kinds = [], []
    cuts = np.sort(rng.choice(np.arange(600, n - 200, 50), size=k * 2, replace=False))
    for i in range(k):
        a = int(cuts[2 * i])
        b = int(min(cuts[2 * i + 1], a + rng.integers(200, 1500)))
        f = FAULTS[rng.integers(4)]
        L = b - a
        cols = list(X.columns)
        if f == 'relationship':   # one of a correlated pair follows another driver: stays within its range
            c = rng.choice(['flow', 'current', 'pressure'])
            src = X[c].to_numpy()
            lo, hi = np.quantile(src[:400], [0.2, 0.8])
            X.loc[a:b - 1, c] = np.clip(src.mean() + (src[a:b] - src[a:b].mean()) * rng.choice([-1, 0.2]), lo,
                                        hi) + rng.normal(0, sd[cols.index(c)] * 0.1, L)
        elif f == 'level':
            c = rng.choice(cols)
            X.loc[a:b - 1, c] += rng.choice([-1, 1]) * rng.uniform(1, 2.5) * sd[cols.index(c)]
        elif f == 'variance':
            X.loc[a:b - 1, 'vibration'] += rng.normal(0, rng.uniform(1.5, 3) * sd[cols.index('vibration')] * 0.5, L)
        else:
            c = rng.choice(cols)
            X.loc[a:b - 1, c] += rng.choice([-1, 1]) * np.linspace(0, rng.uniform(2, 4) * sd[cols.index(c)], L)
        wins.append((a, b - 1))
        kinds.append(f)
    X.index = pd.date_range('2024-01-01', periods=n, freq=freq)
    X[rng.random(X.shape) < 0.002] = np.nan                                    # a few missing readings
    return X, [(X.index[a], X.index[b]) for a, b in wins], kinds


def testbed_rows(n:int, nfit:int=400):
    for seed in range(n):
        X, w, kinds = testbed(seed)
        yield f"syn{seed} ({', '.join(kinds)})", X.iloc[:nfit], X.iloc[nfit:], w


def drifting(seed:int, n:int=1100):
    """A machine whose temperature warms up slowly and harmlessly all along (70 + 0.002/row, noise 0.1; 1 s rows), 8
    sensors, several driven by a common load; a fault at rows 700-950 (current +0.4, flow -2: a relationship break /
    level shift of ~4-8 sigma). Fit on rows :400. Not part of the family means: it checks drift tolerance."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    load = 0.6 + 0.2 * np.sin(2 * np.pi * t / 150) + 0.05 * rng.normal(size=n)
    X = pd.DataFrame({'accel1': 0.5 * load + rng.normal(0, .05, n), 'accel2': 0.4 * load + rng.normal(0, .05, n),
                      'current': 2 + load + rng.normal(0, .05, n), 'pressure': 1 + 0.5 * load + rng.normal(0, .03, n),
                      'temperature': 70 + 0.002 * t + rng.normal(0, .1, n),
                      'thermocouple': 30 + 2 * load + rng.normal(0, .2, n),
                      'voltage': 230 + rng.normal(0, .5, n), 'flow': 30 + 10 * load + rng.normal(0, .3, n)},
                     index=pd.date_range('2024-01-01', periods=n, freq='1s'))
    X.iloc[700:950, X.columns.get_loc('current')] += 0.4
    X.iloc[700:950, X.columns.get_loc('flow')] -= 2
    return f"drift{seed}", X.iloc[:400], X.iloc[400:], [(X.index[700], X.index[949])]


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
    has = df[[c for c in df.columns if c.endswith(' windows')][0]].map(lambda v: not v.endswith('/0'))
    mean = {c: (df[c] if c.endswith(' far') else df.loc[has, c]).mean() for c in num} | {'recording': 'MEAN'}
    df = pd.concat([df, pd.DataFrame([mean])], ignore_index=True)
    print(f"\n## {title}\n")
    print(df.to_markdown(index=False, floatfmt='.3f') if hasattr(df, 'to_markdown') else df.to_string())
    return df.iloc[-1]


def speed(runs:int):
    rng = np.random.default_rng(0)
    n, d = 100_000, 10
    X = pd.DataFrame(np.cumsum(rng.normal(size=(n, d)), 0) * 0.01 + rng.normal(size=(n, d)),
                     index=pd.date_range('2024-01-01', periods=n, freq='1min'), columns=[f's{i}' for i in range(d)])
    fit = X.iloc[:500]
    res = {}
    for name, mk in (('auto', lambda: make_detector('auto')), ('iforest_baseline', IForestBaseline)):
        tf, tp = [], []
        for _ in range(runs):
            t = time.perf_counter()
            det = mk().fit(fit)
            tf.append(time.perf_counter() - t)
            t = time.perf_counter()
            det.predict(X)
            tp.append(time.perf_counter() - t)
        res[name] = (np.median(tf), np.median(tp))
        print(f"{name}: fit 500 rows {np.median(tf):.3f} s ({500/np.median(tf):,.0f} rows/s); "
              f"predict 100k x 10 {np.median(tp):.3f} s ({n/np.median(tp):,.0f} rows/s)")
    det = make_detector('auto').fit(fit)
    lat = []
    for _ in range(max(runs, 5) * 4):
        t = time.perf_counter()
        det.score_last(X.iloc[:5000])
        lat.append(time.perf_counter() - t)
    print(f"auto score_last (one device, last row, from a 5,000-row history): median {np.median(lat)*1e3:.1f} ms")
    print(f"predict ratio auto/baseline: {res['auto'][1]/res['iforest_baseline'][1]:.2f}x the baseline's time")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--nab', default=str(Path(__file__).resolve().parents[1].parent / 'shared/data/nab'),
                    help='NAB folder (realKnownCause/, realKnownCause_windows.json)')
    ap.add_argument('--nfit', type=int, default=500,
                    help='fit rows per NAB recording (at most; fewer if a window starts earlier)')
    ap.add_argument('--pumps', type=int, default=12)
    ap.add_argument('--days', type=int, default=30)
    ap.add_argument('--fit-days', type=float, default=2.0, help='days of normal operation each pump is fit on')
    ap.add_argument('--testbed', type=int, default=12, help='synthetic machines (seeds 0..N-1)')
    ap.add_argument('--seed', type=int, default=7)
    ap.add_argument('--runs', type=int, default=3)
    a = ap.parse_args()
    warnings.simplefilter('ignore')
    root = Path(a.nab)
    means = {}
    if (root / 'realKnownCause_windows.json').exists(): means['nab'] = table(nab_rows(root, a.nfit),
                                                                             f'NAB realKnownCause (fit <= {a.nfit} '
                                                                             f'rows)')
    else: print(f"no NAB data at {root}: pass --nab DIR (skipping part a)")
    means['fleet'] = table(fleet_rows(a.pumps, a.days, a.fit_days, a.seed), f'Simulated fleet ({a.pumps} pumps, '
                                                                            f'{a.days} days, 5 min, seed {a.seed}, fit '
                                                                            f'{a.fit_days} days)')
    means['testbed'] = table(testbed_rows(a.testbed),
                             f'Synthetic multivariate testbed ({a.testbed} machines, fit 400 rows)')
    table((drifting(s) for s in range(3)),
          'Slow harmless drift (warm-up seen in the fit rows) + one fault, not in the means')
    cols = [c for c in next(iter(means.values())).index if c.split()[-1] in ('f1', 'far', 'mar', 'nab')]
    m = pd.DataFrame(means).T[cols].astype(float)
    print('\n## Mean of the family means\n')
    print(m.assign(family=m.index).set_index('family').T.assign(ALL=lambda d: d.mean(1)).round(3).to_string())
    print('\n## Speed\n')
    speed(a.runs)


if __name__ == '__main__':
    main()
