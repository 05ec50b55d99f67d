("The failure model on a simulated wear signal: grouped time folds, calibration, the cost-chosen alert level, RUL, the "
 "bundle.")
import json, warnings
import numpy as np, pandas as pd, pytest
from iot2ml.errors import ConfigError, InputError, NotFound
from iot2ml.ml.features import failure_labels
from iot2ml.ml.evaluate import event_metrics
from iot2ml.ml.models import (FailureModel, Calibrator, time_folds, time_split, cost_curve, cost_threshold, rul_target,
                           save_model, load_model, model_features)

def fleet(pumps=12, days=40, noise=0.35, seed=0):
    ("A table like build_features': a wear signal climbs over the 60 h before each failure; a noise column; failures "
     "and repairs.")
    rng = np.random.default_rng(seed)
    idx = pd.MultiIndex.from_product([[f'p{i:02d}' for i in range(pumps)],
                                      pd.date_range('2026-01-01', periods=days * 24, freq='1h', tz='UTC')],
                                     names=['device_id', 'ts'])
    t0 = pd.Timestamp('2026-01-01', tz='UTC')
    fails = [(f'p{i:02d}', t0 + pd.Timedelta(hours=int(h)))
             for i in range(pumps) for h in rng.choice(np.arange(90, days * 24 - 10, 170), 2, replace=False)]
    log = pd.DataFrame(fails, columns=['device_id', 'ts']).assign(event='failure')
    log = pd.concat([log, log.assign(ts=log['ts'] + pd.Timedelta('5h'), event='repair')], ignore_index=True)
    t = failure_labels(idx, log, '48h')
    wear = np.clip(1 - t['hours_to_failure'].fillna(1e9) / 60, 0, 1)
    t['vib__rel__mean_24'] = 1 + wear + rng.normal(0, noise, len(t))
    t['noise__rel__mean_24'] = rng.normal(size=len(t))
    t['hour'] = t.index.get_level_values('ts').hour
    return t, log

@pytest.fixture(scope='module')
def data():
    t, log = fleet()
    sp = time_split(t, 0.3, '48h')
    return t, log, t[sp.train], t[sp.test], sp

QUICK = dict(max_iter=60)

def brier(p, y): return float(np.mean((np.asarray(p) - np.asarray(y)) ** 2))

def test_calibration_improves_brier_on_held_out(data):
    t, log, tr, te, sp = data
    # an overfitting booster: deep trees, tiny leaves, many rounds -> overconfident scores
    over = dict(max_iter=150, learning_rate=0.2, max_leaf_nodes=31, min_samples_leaf=5, l2_regularization=0.0)
    raw = FailureModel(params=over, calibration='none', threshold=0.5).fit(tr, known_until=sp.cutoff)
    cal = FailureModel(params=over, calibration='isotonic', threshold=0.5).fit(tr, known_until=sp.cutoff)
    sig = FailureModel(params=over, calibration='sigmoid', threshold=0.5).fit(tr, known_until=sp.cutoff)
    b_raw, b_iso, b_sig = (brier(m.predict_proba(te), te['label']) for m in (raw, cal, sig))
    assert b_iso < b_raw and b_sig < b_raw
    # calibrated on out-of-fold scores, not training-set ones: the OOF rows are scored by models that never saw them
    assert len(cal.oof) < len(tr) and cal.oof['fold'].min() >= 0

def test_calibrator_rejects_unknown_method_and_one_class():
    with pytest.raises(ConfigError, match='isotonic, sigmoid or none'): Calibrator('platt').fit([0.1, 0.9], [0, 1])
    with pytest.raises(InputError, match='with and without a failure'): Calibrator('isotonic').fit([0.1, 0.9], [0, 0])

def test_higher_missed_failure_cost_lowers_the_level(data):
    t, log, tr, te, sp = data
    levels, alerts = [], []
    for c in (1.0, 5.0, 100.0):
        m = FailureModel(params=QUICK, cost_missed_failure=c).fit(tr, known_until=sp.cutoff)
        levels.append(m.threshold)
        alerts.append(int(m.predict(te).sum()))
    assert levels == sorted(levels, reverse=True) and levels[0] > levels[-1]
    assert alerts == sorted(alerts) and alerts[0] < alerts[-1]
    # a number is used as is
    assert FailureModel(params=QUICK, threshold=0.37).fit(tr).threshold == 0.37

def test_cost_curve_counts_events_like_event_metrics(data):
    t, log, tr, te, sp = data
    # the whole range: event_metrics ignores failures after its rows' last time, the labels do not
    up = t[~t['down']]
    risk = up['vib__rel__mean_24'] / 3
    cc = cost_curve(risk, up, '48h', 2.0, 30.0)
    for th in np.quantile(risk, [0.5, 0.8, 0.95, 0.99]):
        em = event_metrics(pd.DataFrame({'alert': (risk >= th).astype(int)}), log, '48h')
        row = cost_curve(risk, up, '48h', 2.0, 30.0, thresholds=[th]).iloc[0]
        assert (row['false_alarms'], row['missed']) == (em['false_alarms'], em['missed'])
        assert row['cost'] == 2.0 * em['false_alarms'] + 30.0 * em['missed']
    best = cost_threshold(cc)
    assert cc.loc[cc['threshold'] == best, 'cost'].iloc[0] == cc['cost'].min()

@pytest.mark.parametrize('folds,groups', [(2, 2), (4, 2), (3, 3), (5, 4)])
def test_folds_train_only_on_earlier_rows_of_other_devices(data, folds, groups):
    t = data[0]
    ts, dev = t.index.get_level_values('ts'), t.index.get_level_values('device_id')
    fs = time_folds(t, folds, '48h', groups)
    assert len(fs) == folds * groups
    for f in fs:
        assert f.train.any() and f.valid.any()
        assert ts[f.train].max() <= ts[f.valid].min() - pd.Timedelta('48h')     # the past only, one horizon apart
        assert not set(dev[f.train]) & set(dev[f.valid])                        # never the validated devices
    covered = sum(f.valid.astype(int) for f in fs)
    assert covered.max() == 1                                                   # each row validated once at most
    assert set(dev[covered == 1]) == set(dev)                                   # every device is validated

def test_rul_ranks_closer_failures_lower(data):
    t, log, tr, te, sp = data
    m = FailureModel(params=QUICK).fit(tr, known_until=sp.cutoff)
    rul = m.predict_rul(te)
    h = te['hours_to_failure']
    assert rul.name == 'rul_hours' and rul.between(0, m.cap).all()
    soon, later, far = rul[h <= 24].mean(), rul[(h > 60) & (h <= 144)].mean(), rul[h.isna() | (h > 200)].mean()
    assert soon < later < far
    assert pd.concat([rul, h],
                     axis=1).dropna().query('hours_to_failure <= 144').corr(method='spearman').iloc[0, 1] > 0.3

def test_rul_target_censoring():
    idx = pd.MultiIndex.from_product([['a'], pd.date_range('2026-01-01', periods=10, freq='1h', tz='UTC')],
                                     names=['device_id', 'ts'])
    df = pd.DataFrame({'hours_to_failure': [9, 8, 7, 6, 5, 4, 3, 2, 1, np.nan]}, index=idx, dtype=float)
    y = rul_target(df, cap=4, known_until=pd.Timestamp('2026-01-01 09:00', tz='UTC'))
    assert y.tolist()[:5] == [4, 4, 4, 4, 4] and y.tolist()[5:9] == [4, 3, 2, 1]
    assert np.isnan(y.iloc[9])                  # no failure after it, 0 hours known: below the cap, unknown
    # a failure after known_until is not known: the row is capped if enough is seen, else left out
    y2 = rul_target(df, cap=4, known_until=pd.Timestamp('2026-01-01 06:00', tz='UTC'))
    assert y2.iloc[0] == 4 and np.isnan(y2.iloc[5])

def test_save_load_round_trip(data, tmp_path):
    t, log, tr, te, sp = data
    m = FailureModel(params=QUICK).fit(tr, known_until=sp.cutoff)
    save_model(m, tmp_path/'b')
    back = load_model(tmp_path/'b')
    pd.testing.assert_series_equal(back.predict_proba(te), m.predict_proba(te))
    pd.testing.assert_series_equal(back.predict(te), m.predict(te))
    pd.testing.assert_series_equal(back.predict_rul(te), m.predict_rul(te))
    assert back.detector is None
    card = json.loads((tmp_path/'b'/'model.json').read_text())
    assert card['features'] == m.features and card['threshold'] == m.threshold and card['calibration'] == 'isotonic'
    assert {'start', 'end', 'rows', 'positives'} <= set(card['info'])
    with pytest.raises(NotFound, match='dvc repro train'): load_model(tmp_path/'nothing')

def test_clear_errors(data):
    t, log, tr, te, sp = data
    m = FailureModel(params=QUICK).fit(tr)
    assert 'hour' not in m.features                           # the calendar is left out (model_features)
    with pytest.raises(InputError, match=r"lacks 1 feature column\(s\) of the model: noise__rel__mean_24"):
        m.predict_proba(te.drop(columns='noise__rel__mean_24'))
    with pytest.raises(ValueError, match='not trained'): FailureModel(features=['x']).predict(te)
    with pytest.raises(InputError, match='hold no failure'): FailureModel(params=QUICK).fit(tr.assign(label=0))
    with pytest.raises(ConfigError, match='min_window=48'): model_features(t[['vib__rel__mean_24', 'label']],
                                                                           min_window=48)
    with pytest.raises(ConfigError, match='cannot make 20 device groups'): time_folds(t, 2, '48h', groups=20)

def test_fallback_when_no_fold_sees_a_failure():
    "Pump a fails once, pump b never: no fold both trains on a failure and validates one."
    idx = pd.MultiIndex.from_product([['a', 'b'], pd.date_range('2026-01-01', periods=240, freq='1h', tz='UTC')],
                                     names=['device_id', 'ts'])
    log = pd.DataFrame({'device_id': ['a'], 'ts': [pd.Timestamp('2026-01-05', tz='UTC')], 'event': ['failure']})
    t = failure_labels(idx, log, '48h')
    t = t[~t['down']]
    t['vib__rel__mean_24'] = 1 + t['label'] + np.random.default_rng(0).normal(0, 0.1, len(t))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        m = FailureModel(params=dict(max_iter=20, min_samples_leaf=5), folds=2, cost_false_alarm=1,
                         cost_missed_failure=9).fit(t)
    assert any('no cross-validation fold' in str(x.message) for x in w)
    assert m.threshold == pytest.approx(0.1) and m.info['fallback'] and m.calibration == 'isotonic'
    assert m.predict_proba(t).between(0, 1).all()
