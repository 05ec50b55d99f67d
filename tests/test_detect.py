"Anomaly detectors (iot2ml.ml.detect) and their metrics (iot2ml.ml.evaluate): behaviour on synthetic multivariate data."
import warnings
import numpy as np, pandas as pd, pytest
from sklearn.base import clone
from iot2ml.ml.detect import make_detector, DETECTORS, AutoDetector, NotFittedError, holt_residuals, fit_holt
from iot2ml.ml.evaluate import detection_metrics, nab_score, windows_to_labels

NAMES = list(DETECTORS)


def plant(n=3000, seed=0, freq='5min'):
    "Three correlated sensors with a daily cycle, noise and a little drift: normal operation of one machine."
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    day = np.sin(2 * np.pi * t / 288)
    load = day + 0.3 * rng.normal(size=n)
    return pd.DataFrame({'flow': 20 + 2 * load + 0.3 * rng.normal(size=n),
                         'power': 5 + 0.5 * load + 0.08 * rng.normal(size=n),
                         'temp': 60 + 2 * day + 0.4 * rng.normal(size=n) + 0.0002 * t},
                        index=pd.date_range('2024-01-01', periods=n, freq=freq))


@pytest.mark.parametrize('name', NAMES)
def test_sklearn_compatible(name):
    d = make_detector(name, smooth=(2, 3))
    c = clone(d)
    assert c.get_params() == d.get_params() and c.get_params()['smooth'] == (2, 3)
    c.set_params(smooth=(1, 1))
    assert c.smooth == (1, 1)
    X = plant(800)
    assert c.fit(X.iloc[:400]) is c
    p, s = c.predict(X.iloc[400:]), c.anomaly_score(X.iloc[400:])
    assert p.index.equals(X.index[400:]) and s.index.equals(X.index[400:])
    assert set(p.unique()) <= {0, 1} and p.dtype.kind == 'i' and s.dtype.kind == 'f'


@pytest.mark.parametrize('name,kw', [(n, {}) for n in NAMES]
                         + [(n, {'features': 'rolling'}) for n in ('pca', 'iforest', 'forecast')]
                         + [('auto', {'baseline_w': 200})])
def test_causal(name, kw):
    X = plant(1500, seed=1)
    X.iloc[1100:1200, 2] += 5
    d = make_detector(name, **kw).fit(X.iloc[:400])
    rest = X.iloc[400:]
    full_p, full_s = d.predict(rest).to_numpy(), d.anomaly_score(rest).to_numpy()
    for k in (1, 37, 300, 733, 1099):
        np.testing.assert_array_equal(d.predict(rest.iloc[:k]).to_numpy(), full_p[:k])
        np.testing.assert_allclose(d.anomaly_score(rest.iloc[:k]).to_numpy(), full_s[:k], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize('name', NAMES)
def test_false_alarms_small_on_held_out_normal(name):
    X = plant(3000, seed=2)
    d = make_detector(name).fit(X.iloc[:500])
    assert d.predict(X.iloc[500:]).mean() < 0.03, name



@pytest.mark.parametrize('name', NAMES)
def test_each_detector_flags_a_planted_fault(name):
    "Held-out rows 2000-2300: power up 2.5 sd while flow drops 2 sd, a level shift that breaks their relationship."
    X = plant(3000, seed=12)
    X.iloc[2000:2300, 1] += 1.0
    X.iloc[2000:2300, 0] -= 3.0
    p = make_detector(name).fit(X.iloc[:500]).predict(X.iloc[500:]).to_numpy()
    assert p[:1500].mean() < 0.03, name                               # few false alarms before it
    # one step ahead: the change stands out, then the level is learnt
    if name == 'forecast': assert p[1500:1505].all()
    else: assert p[1500:1800].mean() > 0.9, name


def test_forecast_flags_a_burst_of_noise():
    "A one-step-ahead forecast misses every row of a noisy stretch, not only its start."
    X = plant(3000, seed=12)
    X.iloc[2000:2300, 1] += np.random.default_rng(0).normal(0, 1.0, 300)
    p = make_detector('forecast').fit(X.iloc[:500]).predict(X.iloc[500:]).to_numpy()
    assert p[1500:1800].mean() > 0.3 and p[:1500].mean() < 0.01

def test_auto_false_alarm_rate_on_normal_is_tiny():
    X = plant(4000, seed=3)
    assert make_detector().fit(X.iloc[:400]).predict(X.iloc[400:]).mean() < 0.005


def test_detects_level_shift_and_slow_drift():
    X = plant(4000, seed=4)
    shift = X.copy()
    shift.iloc[2000:2300, 1] += 1.0                       # power steps up 2 sigma of its spread
    drift = X.copy()
    drift.iloc[2000:, 2] += np.linspace(0, 12, 2000)      # temperature climbs slowly
    for Y, lo, hi in ((shift, 2000, 2300), (drift, 3000, 4000)):
        d = make_detector().fit(Y.iloc[:400])
        p = d.predict(Y.iloc[400:]).to_numpy()
        lo, hi = lo - 400, hi - 400
        assert p[lo:hi].mean() > 0.5 and p[:1500].mean() < 0.01


def test_nan_rows_and_constant_columns():
    X = plant(1200, seed=5)
    X['const'] = 1.0
    X.iloc[700:705, :] = np.nan
    X.iloc[800:830, 0] = np.nan
    with pytest.warns(UserWarning, match="const"):
        d = make_detector().fit(X.iloc[:400])
    assert d.dropped_ == ['const'] and 'const' not in d.columns_
    s, p = d.anomaly_score(X.iloc[400:]), d.predict(X.iloc[400:])
    assert s.iloc[300:305].isna().all() and (p.iloc[300:305] == 0).all()      # all-NaN rows: NaN score, no flag
    assert s.drop(s.index[300:305]).notna().all()                             # a gap in one sensor is filled: scored
    # a long gap is filled with the fit median, which looks like a level change, so alarms may follow it; elsewhere none
    assert p.iloc[:395].mean() < 0.01 and p.iloc[500:].mean() < 0.01
    with pytest.raises(ValueError, match="every column"):
        make_detector().fit(pd.DataFrame({'a': 1.0}, index=X.index[:100]))


def test_multiindex_per_device():
    a, b = plant(1500, seed=6), plant(1500, seed=7) * 1.05
    b.iloc[1000:1200, 2] += 6
    fleet = pd.concat({'pump-1': a, 'pump-2': b}, names=['device_id', 'ts'])
    fit = pd.concat({'pump-1': a.iloc[:400], 'pump-2': b.iloc[:400]}, names=['device_id', 'ts'])
    rest = fleet[fleet.index.get_level_values('ts') >= a.index[400]]
    d = make_detector().fit(fit)
    p = d.predict(rest)
    assert p.index.equals(rest.index)
    p1, p2 = p.xs('pump-1'), p.xs('pump-2')
    assert p1.mean() < 0.01 and p2.iloc[600:800].mean() > 0.5
    # per device: interleaving the rows of the devices changes nothing
    shuffled = rest.sort_index(level='ts', sort_remaining=False)
    np.testing.assert_array_equal(d.predict(shuffled).reindex(rest.index).to_numpy(), p.to_numpy())
    # one device scored alone = the same device inside the fleet
    alone = d.predict(rest.loc[['pump-2']])
    np.testing.assert_array_equal(alone.to_numpy(), p2.to_numpy())
    last = d.score_last(rest)
    assert list(last.index.get_level_values(0)) == ['pump-1', 'pump-2']
    assert last['anomaly_flag'].tolist() == [p1.iloc[-1], p2.iloc[-1]]


def test_score_last_matches_full_history_for_rolling_features():
    X = plant(2000, seed=8)
    d = make_detector('iforest', features='rolling').fit(X.iloc[:400])
    full = d.anomaly_score(X.iloc[400:])
    assert d.score_last(X.iloc[400:])['anomaly'].iloc[0] == pytest.approx(full.iloc[-1])


def test_bad_input_errors():
    X = plant(600)
    with pytest.raises(NotFittedError, match="call fit"):
        make_detector().predict(X)
    d = make_detector().fit(X.iloc[:300])
    with pytest.raises(ValueError, match=r"\['temp'\]"):
        d.predict(X[['flow', 'power']])
    with pytest.raises(TypeError, match="DatetimeIndex"):
        d.predict(X.reset_index(drop=True))
    with pytest.raises(ValueError, match="did you mean"):
        make_detector('mahalanobs')
    with pytest.raises(ValueError, match="at least 20 rows"):
        make_detector().fit(X.iloc[:5])


def test_holt_filter_matches_statsmodels():
    from statsmodels.tsa.holtwinters import ExponentialSmoothing
    y = plant(500)['temp'].to_numpy()
    a, b, f = fit_holt(y)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        m = ExponentialSmoothing(y, trend='add', damped_trend=True, initialization_method='known',
                                 initial_level=y[0], initial_trend=0.).fit()
    np.testing.assert_allclose(holt_residuals(y, a, b, f), y - m.fittedvalues, atol=1e-6)


def test_pca_control_limits_and_mahalanobis_fallback():
    X = plant(1500, seed=9)
    p = make_detector('pca').fit(X.iloc[:500])
    assert 0 < p.t2_limit_ < 50 and 0 < p.spe_limit_ < np.inf
    Y = X.copy()
    Y.iloc[1000:1100, 1] -= 1.5                               # power leaves flow: SPE
    assert p.predict(Y.iloc[1000:1100]).mean() > 0.8
    m = make_detector('mahalanobis').fit(X.assign(copy=X['flow']).iloc[:500])
    assert m.method_ == 'ledoit-wolf'


def test_detection_metrics_hand_case():
    y = [0, 0, 1, 1, 1, 0, 0, 1, 1, 0]
    p = [0, 1, 0, 1, 1, 0, 0, 0, 0, 1]
    m = detection_metrics(y, p)
    assert m['precision'] == pytest.approx(0.5) and m['recall'] == pytest.approx(0.4)
    assert m['false_alarm_rate'] == pytest.approx(0.4) and m['missed_alarm_rate'] == pytest.approx(0.6)
    assert (m['windows'], m['windows_detected'], m['false_alarm_events']) == (2, 1, 2)


def test_nab_score_hand_cases():
    ix = pd.date_range('2024-01-01', periods=30, freq='h')
    wins = [(ix[5], ix[9]), (ix[20], ix[24])]
    f = lambda *on: pd.Series([int(i in on) for i in range(30)], index=ix)
    assert nab_score(f(5, 20), wins) == pytest.approx(100)
    assert nab_score(f(), wins) == pytest.approx(0)
    # detecting one window at its start and missing the other: raw 1 - 1 = 0 -> halfway
    assert nab_score(f(5), wins) == pytest.approx(50)
    # last row of a window: sigmoid(-1/5*5)... position -(9-9+1)/5 = -0.2 -> 2/(1+e^-1)-1 = 0.4621, scaled by max_tp
    tp = (2 / (1 + np.exp(-1)) - 1) / (2 / (1 + np.exp(-5)) - 1)
    assert nab_score(f(9, 20), wins) == pytest.approx(100 * (tp + 1 + 2) / 4)
    # a false positive before any window costs fp (0.11 standard, 0.22 reward_low_FP_rate)
    assert nab_score(f(0, 5, 20), wins) == pytest.approx(100 * (2 - 0.11 + 2) / 4)
    assert nab_score(f(0, 5, 20), wins, 'reward_low_FP_rate') == pytest.approx(100 * (2 - 0.22 + 2) / 4)
    # reward_low_FN_rate: a miss costs 2, null = -4, perfect = 2
    assert nab_score(f(5), wins, 'reward_low_FN_rate') == pytest.approx(100 * (1 - 2 + 4) / 6)
    # a false positive right after a window costs little; far after, almost the full fp
    near, far = nab_score(f(5, 10, 20), wins), nab_score(f(5, 19, 20), wins)
    assert 100 > near > far > 100 * (4 - 0.12) / 4
    with pytest.raises(ValueError, match="standard"):
        nab_score(f(5), wins, 'strict')
    y = windows_to_labels(ix, wins)
    assert y.sum() == 10


def test_auto_catches_a_broken_relationship_within_range():
    "power stops following flow (held near its median, inside its fit range): SPE sees it, level alone would not."
    X = plant(4000, seed=11)
    Y = X.copy()
    med, (lo, hi) = X['power'].iloc[:400].median(), X['power'].iloc[:400].quantile([0.05, 0.95])
    Y.iloc[2500:3100, 1] = med + 0.08 * np.random.default_rng(0).normal(size=600)
    assert Y['power'].iloc[2500:3100].between(lo, hi).mean() > 0.95                  # stays within its usual range
    d = make_detector().fit(Y.iloc[:400])
    p = d.predict(Y.iloc[400:]).to_numpy()
    normal = np.r_[p[:2100], p[2850:]]                                               # 150 rows after the end to recover
    # the plant drifts late: a few rows
    assert p[2100:2700].mean() > 0.6 and p[:2100].mean() < 0.01 and normal.mean() < 0.05
    assert d.explain(Y.iloc[2600:2700]).value_counts().index[0] in ('spe', 't2')


def drifting_machine(seed=0, n=1100):
    """8 sensors at 1 s, several driven by a common load; the temperature warms up slowly and harmlessly all along
    (70 + 0.002 per row); rows 700-950 hold a fault: current +0.4 and flow -2 (a relationship break / level shift)."""
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
    return X


@pytest.mark.parametrize('seed', [0, 1])
def test_auto_tolerates_slow_drift_seen_in_fit_and_still_flags_the_fault(seed):
    X = drifting_machine(seed)
    d = make_detector().fit(X.iloc[:400])
    test = X.iloc[400:]
    p = d.predict(test).to_numpy()
    fault = np.zeros(len(test), bool)
    fault[300:550] = True
    assert p[~fault].mean() < 0.05 and p[fault].mean() > 0.6
    assert not d.explain(test)[p == 1].str.startswith('level:temperature').any()
    off = make_detector('auto', trend=False).fit(X.iloc[:400]).predict(test).to_numpy()
    assert off[~fault].mean() > 0.1                                  # without the fit trend the drift alarms


@pytest.mark.parametrize('name', ['auto', 'pca'])
def test_unsorted_rows_give_the_same_answers_in_the_callers_order(name):
    X = plant(1500, seed=5)
    X.iloc[1100:1200, 2] += 5
    d = make_detector(name).fit(X.iloc[:400].iloc[::-1])
    ref = make_detector(name).fit(X.iloc[:400])
    rest = X.iloc[400:]
    perm = np.random.default_rng(0).permutation(len(rest))
    p, s = d.predict(rest.iloc[perm]), d.anomaly_score(rest.iloc[perm])
    assert p.index.equals(rest.index[perm])
    np.testing.assert_array_equal(p.sort_index().to_numpy(), ref.predict(rest).to_numpy())
    np.testing.assert_allclose(s.sort_index().to_numpy(), ref.anomaly_score(rest).to_numpy())
    assert p.loc[rest.index[700:800]].mean() > 0.5
    assert d.score_last(rest.iloc[perm])['anomaly'].iloc[0] == pytest.approx(ref.score_last(rest)['anomaly'].iloc[0])
    fleet = pd.concat({'a': rest, 'b': rest}, names=['device_id', 'ts'])
    f = fleet.iloc[np.r_[perm, perm + len(rest)][::-1]]
    fd = make_detector(name).fit(pd.concat({'a': X.iloc[:400], 'b': X.iloc[:400]},
                                           names=['device_id', 'ts']).iloc[::-1])
    fp = fd.predict(f)
    assert fp.index.equals(f.index)
    np.testing.assert_array_equal(fp.loc['a'].sort_index().to_numpy(), fp.loc['b'].sort_index().to_numpy())


def test_auto_fitted_before_the_trend_was_kept_still_scores():
    "A detector unpickled from an older bundle lacks the new attributes: it scores as before (no trend, no baseline)."
    X = plant(1500, seed=9)
    d = make_detector().fit(X.iloc[:400])
    old = make_detector(trend=False).fit(X.iloc[:400])
    for a in ('trend', 'trend_power', 'baseline_w', 'baseline_gate', 'baseline_t2', 'trend_', 'tail_t_'): delattr(d, a)
    np.testing.assert_allclose(d.anomaly_score(X.iloc[400:]).to_numpy(), old.anomaly_score(X.iloc[400:]).to_numpy())
