"""The pump-fleet simulator: determinism, physics, faults in the signals, messiness rates and batching.

Fault signatures are checked against twins: the same fleet (same seed) with a kind of fault turned off.
Every part of the simulator draws from its own random stream, so a twin differs only by the faults.
"""
from dataclasses import replace

import numpy as np, pandas as pd, pyarrow as pa, pyarrow.compute as pc, pytest

from iot2ml.sim import fleet as S
from iot2ml.schema import RAW_SCHEMA
from iot2ml.sim.fleet import (SENSORS, UNITS, DECIMALS, SCHEMA, FleetSpec, asset_registry, fault_schedule,
                             maintenance_log, clock_skew, iter_batches, simulate)

SI = {s: i for i, s in enumerate(SENSORS)}
H = 60   # steps per hour at 1-minute resolution


def dense(t: pa.Table, spec: FleetSpec):
    "Values and quality as arrays (pumps, steps, sensors), NaN where no reading came; needs clocks on the grid."
    g = S._grid(spec)
    dev = pc.index_in(t['device_id'], pa.array(S.device_ids(spec.pumps))).to_numpy()
    sen = pc.index_in(t['sensor'], pa.array(SENSORS)).to_numpy()
    off = t['ts'].cast(pa.int64()).to_numpy() - g.start_us
    assert (off % g.step_us == 0).all()
    v = np.full((spec.pumps, g.n, len(SENSORS)), np.nan)
    q = np.zeros(v.shape, np.uint8)
    v[dev, off//g.step_us, sen] = t['value'].to_numpy()
    q[dev, off//g.step_us, sen] = t['quality'].to_numpy()
    return v, q


def step_of(ts, spec):
    "Index of the first step at or after `ts`."
    g = S._grid(spec)
    return int(-(-((ts - g.start) // pd.Timedelta('1us')) // g.step_us))


# Equipment faults only (A), sensor faults only (B), neither (Z): the same fleet otherwise.
BASE = FleetSpec(pumps=30, days=14, seed=5, skewed_devices=0)
A_SPEC = replace(BASE, fault_rate=2.0, sensor_fault_rate=0.0)
B_SPEC = replace(BASE, fault_rate=0.0, sensor_fault_rate=4.0)
Z_SPEC = replace(BASE, fault_rate=0.0, sensor_fault_rate=0.0)
# Messy delivery: default rates, more skewed clocks, no sensor faults (so every missing reading is messiness).
M_SPEC = FleetSpec(pumps=40, days=6, seed=11, skewed_devices=0.1, sensor_fault_rate=0.0)


@pytest.fixture(scope='module')
def A(): return dense(simulate(A_SPEC), A_SPEC)

@pytest.fixture(scope='module')
def B(): return dense(simulate(B_SPEC), B_SPEC)

@pytest.fixture(scope='module')
def Z(): return dense(simulate(Z_SPEC), Z_SPEC)

@pytest.fixture(scope='module')
def M_batches(): return list(iter_batches(M_SPEC))

@pytest.fixture(scope='module')
def M(M_batches):
    t = pa.concat_tables(b for _, b in M_batches)
    g = S._grid(M_SPEC)
    return pd.DataFrame({'dev': pc.index_in(t['device_id'], pa.array(S.device_ids(M_SPEC.pumps))).to_numpy(),
                         'sen': pc.index_in(t['sensor'], pa.array(SENSORS)).to_numpy(),
                         'ts': t['ts'].cast(pa.int64()).to_numpy() - g.start_us,
                         'arr': t['arrival_ts'].cast(pa.int64()).to_numpy() - g.start_us,
                         'value': t['value'].to_numpy()})


# ---------------------------------------------------------------- API and determinism

def test_tables_have_the_documented_shape():
    spec = FleetSpec(pumps=4, days=1, fault_rate=60, sensor_fault_rate=60)
    reg = asset_registry(spec)
    assert list(reg.columns) == ['device_id', 'site', 'model', 'install_date', 'rated_flow', 'rated_head',
                                 'rated_power', 'latitude', 'longitude']
    assert reg.device_id.tolist() == ['pump-0001', 'pump-0002', 'pump-0003', 'pump-0004']
    fs = fault_schedule(spec)
    assert list(fs.columns) == ['device_id', 'fault', 'kind', 'sensor', 'onset', 'failure', 'repaired']
    assert set(fs.kind) == {'equipment', 'sensor'} and str(fs.onset.dtype) == 'datetime64[us, UTC]'
    assert fs[fs.kind == 'equipment'].sensor.isna().all() and fs[fs.kind == 'sensor'].sensor.isin(SENSORS).all()
    log = maintenance_log(spec)
    assert list(log.columns) == ['device_id', 'ts', 'event', 'fault', 'note'] and log.ts.is_monotonic_increasing
    t = simulate(spec)
    assert t.schema == SCHEMA and set(t['unit'].to_pylist()) <= set(UNITS.values())
    assert SCHEMA == RAW_SCHEMA


def test_same_seed_same_output_different_seed_different():
    spec = FleetSpec(pumps=5, days=2, fault_rate=5, sensor_fault_rate=5)
    a, b = list(iter_batches(spec)), list(iter_batches(spec))
    assert [i for i, _ in a] == [i for i, _ in b] and all(x.equals(y) for (_, x), (_, y) in zip(a, b))
    for f in (asset_registry, fault_schedule, maintenance_log,
              clock_skew): pd.testing.assert_frame_equal(f(spec), f(spec))
    other = replace(spec, seed=43)
    assert not simulate(other).equals(simulate(spec))
    assert not fault_schedule(other).equals(fault_schedule(spec))
    assert [i for i, _ in iter_batches(other)][0] == 'sim-43-20260101'


def test_spec_errors_name_the_field():
    for kw, msg in [(dict(freq='7min'), 'freq must divide a day'), (dict(start='2026-01-01 12:00'),
                                                                    'start must be a date'),
                    (dict(missing_rate=1.5), 'missing_rate'), (dict(pumps=0), 'pumps'), (dict(days=0), 'days')]:
        with pytest.raises(ValueError, match=msg): simulate(FleetSpec(**kw))


def test_default_fleet_has_20_to_30_failures():
    log = maintenance_log(FleetSpec())
    assert 20 <= (log.event == 'failure').sum() <= 30


def test_other_resolutions_and_partial_days():
    t = simulate(FleetSpec(pumps=2, days=0.25, freq='10s', missing_rate=0, duplicate_rate=0, late_rate=0,
                           out_of_order_rate=0, sensor_fault_rate=0))
    assert t.num_rows == 2*(6*3600//10)*7


def test_progress_bar_runs():
    assert sum(b.num_rows for _, b in iter_batches(FleetSpec(pumps=2, days=1), progress=True)) > 0


# ---------------------------------------------------------------- physics of healthy pumps

def test_healthy_signals_are_physical(Z):
    v, q = Z
    a = S.fleet_assets(Z_SPEC)
    assert (q == 0).all() and not np.isnan(v).all(axis=(0, 1)).any()
    assert np.nanmin(v[..., SI['discharge_pressure']] - v[..., SI['suction_pressure']]) > 0.5
    flow = v[..., SI['flow']]
    assert np.nanmax(flow/a['qr'][:, None]) < 1.15 and np.nanmin(flow/a['qr'][:, None]) > 0.2
    pf = v[..., SI['power']]*1000/(np.sqrt(3)*400*v[..., SI['motor_current']])
    assert 0.4 < np.nanpercentile(pf, 1) and np.nanpercentile(pf, 99) < 0.95
    assert 30 < np.nanmedian(v[..., SI['bearing_temp']]) < 70 and 0.5 < np.nanmedian(v[..., SI['vibration_rms']]) < 4.5
    for s, d in DECIMALS.items():       # every reading at its sensor's resolution
        x = v[..., SI[s]]
        x = x[~np.isnan(x)]*10**d
        assert np.abs(x - np.round(x)).max() < 1e-6


def test_demand_has_daily_and_weekly_cycles(Z):
    v, _ = Z
    flow = v[..., SI['flow']].reshape(Z_SPEC.pumps, -1, 24*H)       # (pumps, days, minutes of day)
    hourly = np.nanmean(flow.reshape(Z_SPEC.pumps, -1, 24, H), axis=(1, 3))      # (pumps, hour of day)
    assert (hourly.min(1) < 0.75*hourly.max(1)).all()                           # a night trough
    days = pd.date_range(Z_SPEC.start, periods=flow.shape[1])
    daily = np.nanmean(flow, axis=2)
    assert (daily[:, days.day_of_week >= 5].mean(1) < daily[:, days.day_of_week < 5].mean(1)).all()


# ---------------------------------------------------------------- equipment faults

def _equipment_effects(A, Z):
    ("For each clean fault: change of the faulted pump from before onset to its last 6 h, over the same change in the "
     "healthy twin.")
    fs = fault_schedule(A_SPEC)
    eq = fs[(fs.kind == 'equipment') & fs.failure.notna()]
    rows = []
    for r in eq.itertuples():
        prev = eq[(eq.device_id == r.device_id) & (eq.onset < r.onset)]
        too_early = (r.onset - S._grid(A_SPEC).start) < pd.Timedelta('2D')
        if too_early or (prev.repaired > r.onset - pd.Timedelta('48h')).any(): continue
        p, o, f = int(r.device_id[5:]) - 1, step_of(r.onset, A_SPEC), step_of(r.failure, A_SPEC)
        k = -(-(f - o + 6*H)//(24*H))                      # same hours of day, whole days earlier, before onset
        after, before = slice(f - 6*H, f), slice(f - 6*H - k*24*H, f - k*24*H)
        m = lambda v, w: np.nanmean(v[p, w], axis=0)
        ratio = (m(A[0], after)/m(A[0], before))/(m(Z[0], after)/m(Z[0], before))
        dtemp = (m(A[0], after) - m(A[0], before) - m(Z[0], after) + m(Z[0], before))[SI['bearing_temp']]
        rows.append(dict(fault=r.fault, dtemp=dtemp, **{s: ratio[i] for s, i in SI.items()}))
    return pd.DataFrame(rows)


@pytest.fixture(scope='module')
def effects(A, Z): return _equipment_effects(A, Z)


def test_every_equipment_fault_kind_is_covered(effects):
    assert effects.fault.value_counts().min() >= 2 and set(effects.fault) == set(S.EQUIPMENT_FAULTS)


def test_blockage_raises_pressure_cuts_flow_shifts_current(effects):
    e = effects[effects.fault == 'blockage']
    assert (e.discharge_pressure > 1.15).all() and (e.flow < 0.9).all() and ((e.motor_current - 1).abs() > 0.05).all()


def test_bearing_wear_raises_vibration_and_bearing_temperature(effects):
    e = effects[effects.fault == 'bearing_wear']
    assert (e.vibration_rms > 2).all() and (e.dtemp > 8).all()
    assert ((e.flow - 1).abs() < 0.05).all()                     # hydraulics unchanged


def test_seal_leak_cuts_delivered_flow_raises_current_and_temperature(effects):
    e = effects[effects.fault == 'seal_leak']
    assert (e.flow < 0.8).all() and (e.motor_current > 1.03).all() and (e.dtemp > 2).all()
    assert ((e.discharge_pressure - 1).abs() < 0.1).all()        # pressure nearly unchanged


def test_vibration_spikes_late_in_bearing_wear(A, Z):
    fs = fault_schedule(A_SPEC)
    r = fs[(fs.fault == 'bearing_wear') & fs.failure.notna()].iloc[0]
    p, f = int(r.device_id[5:]) - 1, step_of(r.failure, A_SPEC)
    x = A[0][p, f - 12*H:f, SI['vibration_rms']]
    x = x[~np.isnan(x)]
    assert x.max() > 1.4*np.median(x)


def test_pump_is_off_between_failure_and_repair_then_healthy(A):
    v, _ = A
    fs = fault_schedule(A_SPEC)
    eq = fs[fs.failure.notna() & fs.repaired.notna()]
    assert len(eq) >= 5
    for r in eq.itertuples():
        p, f, rep = int(r.device_id[5:]) - 1, step_of(r.failure, A_SPEC), step_of(r.repaired, A_SPEC)
        down = v[p, f:rep]
        for s in ('flow', 'motor_current', 'power'): assert np.nanmax(np.abs(down[:, SI[s]])) == 0, (r, s)
        assert np.nanmax(down[:, SI['vibration_rms']]) < 0.2
        assert np.nanmin(down[:, SI['discharge_pressure']] - down[:, SI['suction_pressure']]) > 0.5   # static head held
        up = v[p, rep:rep + 6*H]
        assert np.nanmin(up[:, SI['flow']]) > 0 and np.nanmin(up[:, SI['motor_current']]) > 0


def test_failures_are_logged_after_a_fault_onset():
    fs, log = fault_schedule(A_SPEC), maintenance_log(A_SPEC)
    fails = log[log.event == 'failure']
    assert len(fails) >= 10
    for r in fails.itertuples():
        f = fs[(fs.device_id == r.device_id) & (fs.failure == r.ts)]
        assert len(f) == 1 and f.onset.iloc[0] < r.ts and f.fault.iloc[0] == r.fault
        rep = log[(log.device_id == r.device_id) & (log.event == 'repair') & (log.ts > r.ts)]
        if len(rep): assert pd.Timedelta('4h') <= rep.ts.min() - r.ts <= pd.Timedelta('24h')
    end = S._grid(A_SPEC).start + pd.Timedelta(days=A_SPEC.days)
    assert (log.ts < end).all()


# ---------------------------------------------------------------- sensor faults

def test_sensor_faults_touch_only_their_sensor_and_span(B, Z):
    (vb, qb), (vz, _) = B, Z
    fs = fault_schedule(B_SPEC)
    fs = fs[fs.kind == 'sensor']
    assert set(fs.fault) == set(S.SENSOR_FAULTS)
    allowed = np.zeros(vb.shape, bool)
    for r in fs.itertuples():
        end = S._grid(B_SPEC).n if pd.isna(r.repaired) else step_of(r.repaired, B_SPEC)
        allowed[int(r.device_id[5:]) - 1, step_of(r.onset, B_SPEC):end, SI[r.sensor]] = True
    changed = ~((vb == vz) | (np.isnan(vb) & np.isnan(vz)))
    assert changed.any() and not (changed & ~allowed).any()
    assert not (qb.astype(bool) & ~allowed).any()


def _spans(kind, min_steps=4*H):
    "(pump, steps, sensor) of each fault of `kind` in B lasting at least `min_steps` within the period."
    fs = fault_schedule(B_SPEC)
    g = S._grid(B_SPEC)
    for r in fs[fs.fault == kind].itertuples():
        i0, i1 = step_of(r.onset, B_SPEC), g.n if pd.isna(r.repaired) else step_of(r.repaired, B_SPEC)
        if i1 - i0 >= min_steps: yield int(r.device_id[5:]) - 1, slice(i0, i1), SI[r.sensor]


def test_stuck_sensor_has_zero_variance(B, Z):
    n = 0
    for p, w, s in _spans('stuck'):
        x = B[0][p, w, s]
        x = x[~np.isnan(x)]
        n += 1
        assert np.ptp(x) == 0 and np.nanstd(Z[0][p, w, s]) > 0
    assert n >= 2


def test_drift_is_a_growing_offset(B, Z):
    n = 0
    for p, w, s in _spans('drift'):
        d = np.abs(B[0][p, w, s] - Z[0][p, w, s])
        q = len(d)//4
        n += 1
        assert np.nanmean(d[-q:]) > 3*np.nanmean(d[:q]) and np.nanmean(d[-q:]) > 0.05*S._fleet(B_SPEC).ref[s, p]
    assert n >= 2


def test_spikes_are_rare_large_jumps_flagged_when_out_of_range(B, Z):
    fl = S._fleet(B_SPEC)
    n = 0
    for p, w, s in _spans('spikes'):
        d = np.abs(B[0][p, w, s] - Z[0][p, w, s])
        span = fl.hi[s, p] - fl.lo[s, p]
        n += 1
        assert 0.01 < np.nanmean(d > 0) < 0.06 and np.nanmean(d > 0.1*span) > 0.005
        assert (d[B[1][p, w, s] == 1] > 0).all()                       # only spikes are flagged
    assert n >= 2
    v, q = B
    lo, hi = (np.broadcast_to(x.T[:, None, :], v.shape) for x in (fl.lo, fl.hi))
    flagged = q == 1
    assert flagged.any() and ((v == lo) | (v == hi))[flagged].all()      # clipped to the measuring range
    assert not ((v < lo) | (v > hi)).any()


def test_dropout_removes_readings_of_one_sensor(B, Z):
    n = 0
    for p, w, s in _spans('dropout'):
        n += 1
        assert np.isnan(B[0][p, w, s]).all() and np.isnan(Z[0][p, w, s]).mean() < 0.05
        others = [i for i in range(len(SENSORS)) if i != s]
        assert np.isnan(B[0][p, w][:, others]).mean() < 0.05
    assert n >= 2


def test_sensor_replacements_are_logged():
    fs, log = fault_schedule(B_SPEC), maintenance_log(B_SPEC)
    rep = log[log.event == 'sensor_replaced']
    done = fs[(fs.kind == 'sensor') & fs.repaired.notna()]
    assert len(rep) == len(done) and set(zip(rep.device_id, rep.ts)) == set(zip(done.device_id, done.repaired))


# ---------------------------------------------------------------- messiness

def _expected_readings(spec): return spec.pumps*S._grid(spec).n*len(SENSORS)


def test_missing_and_duplicate_rates(M):
    keys = M.drop_duplicates(['dev', 'sen', 'ts'])
    missing = 1 - len(keys)/_expected_readings(M_SPEC)
    dups = (len(M) - len(keys))/len(keys)
    assert M_SPEC.missing_rate*0.85 < missing < M_SPEC.missing_rate*1.15
    assert M_SPEC.duplicate_rate*0.85 < dups < M_SPEC.duplicate_rate*1.15
    d = M[M.duplicated(['dev', 'sen', 'ts'], keep=False)].sort_values('arr')
    g = d.groupby(['dev', 'sen', 'ts'])
    assert (g.value.nunique() == 1).all() and (g.arr.nunique() > 1).all()    # exact re-sends, later


def test_late_rate_and_out_of_order(M):
    skewed = set(pc.index_in(pa.array(clock_skew(M_SPEC).device_id), pa.array(S.device_ids(M_SPEC.pumps))).to_pylist())
    first = M[~M.dev.isin(skewed)].sort_values('arr').drop_duplicates(['dev', 'ts'])   # one row per message
    late = np.mean(first.arr - first.ts > 3600e6)
    assert M_SPEC.late_rate*0.85 < late < M_SPEC.late_rate*1.15
    assert (first.arr - first.ts > 0).all() and (first.arr - first.ts < 49*3600e6).all()
    behind = first.ts.to_numpy() < first.groupby('dev').ts.cummax().groupby(first.dev).shift(1).to_numpy()
    expect = M_SPEC.late_rate + M_SPEC.out_of_order_rate
    assert expect*0.8 < behind.mean() < expect*1.2


def test_clock_skew_only_on_skewed_devices(M):
    sk = clock_skew(M_SPEC)
    g = S._grid(M_SPEC)
    assert len(sk) == round(M_SPEC.skewed_devices*M_SPEC.pumps)
    ids = pc.index_in(pa.array(sk.device_id), pa.array(S.device_ids(M_SPEC.pumps))).to_numpy()
    on_grid = (M.ts % g.step_us == 0)
    assert on_grid[~M.dev.isin(ids)].all()
    lag = (M.arr - M.ts)/1e6
    assert lag[~M.dev.isin(ids)].median() < 3
    for i, r in zip(ids, sk.itertuples()):
        first_day = (M.dev == i) & (M.ts < 86400e6)
        assert abs(-lag[first_day].median() - (r.offset_s + r.drift_s_per_day*0.5)) < 5
        assert not on_grid[M.dev == i].all()


# ---------------------------------------------------------------- batches

def test_batches_by_arrival_day_late_readings_later(M_batches):
    g = S._grid(M_SPEC)
    days = pd.date_range(M_SPEC.start, periods=len(M_batches), tz='UTC')
    assert [b for b, _ in M_batches] == [f"sim-{M_SPEC.seed}-{d:%Y%m%d}" for d in days]
    assert len(M_batches) > g.n_days                         # readings still in transit at the end
    late_seen = 0
    for (bid, t), day in zip(M_batches, days):
        arr = t['arrival_ts'].cast(pa.int64()).to_numpy()
        assert (np.diff(arr) >= 0).all()                      # in arrival order
        assert (arr >= day.value//1000).all() and (arr < day.value//1000 + S.DAY_US).all()
        ts = t['ts'].cast(pa.int64()).to_numpy()
        late_seen += (ts < day.value//1000 - 3600e6).sum()    # events of an earlier day
    assert late_seen > 0
    tail = M_batches[-1][1]
    assert (tail['ts'].cast(pa.int64()).to_numpy() < g.start_us + g.n*g.step_us).all()
