"Validation of readings: every rejection names the record, the field and the fix (exact messages pinned)."
import numpy as np, pandas as pd, pyarrow as pa, pytest
from iot2ml.schema import validate, check, parse_ts, to_wide, to_long, SchemaError, LONG_SCHEMA

NOW = pd.Timestamp('2026-01-10', tz='UTC')

def one(**kw):
    rec = dict(device_id='pump-0001', ts='2026-01-01T00:00:00Z', sensor='flow', value=1.0) | kw
    return pd.DataFrame([{k: v for k, v in rec.items() if v is not ...}])

def msg(df, **kw):
    res = validate(df, now=NOW, **kw)
    assert res.table.num_rows == 0 and len(res.errors) == 1
    return str(res.errors[0])

@pytest.mark.parametrize('field', ['device_id', 'ts', 'sensor', 'value'])
def test_missing_field(field):
    assert msg(one(**{field: ...})) == f"record 0, field '{field}': is missing; every reading needs device_id, ts, sensor, value"
    assert msg(one(**{field: None})) == f"record 0, field '{field}': is missing; every reading needs device_id, ts, sensor, value"

def test_non_numeric_value():
    assert msg(one(value='12,5')) == "record 0, field 'value': '12,5' is not a number; send a number such as 12.5"

@pytest.mark.parametrize('v,shown', [(float('nan'), 'nan'), (float('inf'), 'inf'), ('-inf', '-inf'), ('NaN', 'nan')])
def test_nan_inf(v, shown):
    assert msg(one(value=v)) == f"record 0, field 'value': is {shown}, not a finite number; send a finite number or leave the reading out"

def test_before_2000():
    assert msg(one(ts='1999-12-31T23:59:59Z')) == ("record 0, field 'ts': 1999-12-31T23:59:59+00:00 is before 2000-01-01; "
                                                   "check the device clock or the time unit")

def test_far_future():
    assert msg(one(ts='2026-01-11T00:00:01Z')) == ("record 0, field 'ts': 2026-01-11T00:00:01+00:00 is more than a day in the future; "
                                                   "check the device clock")

def test_no_zone_is_ambiguous():
    assert msg(one(ts='2026-01-01 10:00')) == ("record 0, field 'ts': '2026-01-01 10:00' has no time zone, so it is ambiguous; "
                                               "add 'Z' for UTC or an offset such as +01:00")

def test_dst_fold_is_ambiguous_in_named_zone():
    assert msg(one(ts='2025-10-26 02:30'), assume_tz='Europe/Berlin') == (
        "record 0, field 'ts': '2025-10-26 02:30' does not name one instant in Europe/Berlin (a daylight-saving change); "
        "add an offset such as +01:00")
    ok = validate(one(ts='2025-10-26 04:30'), now=NOW, assume_tz='Europe/Berlin')
    assert ok.table.column('ts')[0].as_py() == pd.Timestamp('2025-10-26 03:30', tz='UTC')

def test_not_a_time():
    assert msg(one(ts='yesterday')) == "record 0, field 'ts': 'yesterday' is not an ISO 8601 time; send e.g. 2026-01-01T12:00:00Z"

def test_duplicate_key_in_batch():
    df = pd.concat([one(), one(value=2.0), one(ts='2026-01-01T00:00:00+00:00', value=3.0)], ignore_index=True)
    res = validate(df, now=NOW)
    assert res.accepted.tolist() == [0]
    assert [str(e) for e in res.errors] == [
        "record 1, field 'ts': duplicates record 0 (same device_id, sensor and ts); send each reading once",
        "record 2, field 'ts': duplicates record 0 (same device_id, sensor and ts); send each reading once"]

def test_bad_ids_and_control_characters():
    assert msg(one(device_id='pump\x001')) == ("record 0, field 'device_id': 'pump\\\\x001' is not a valid device id; use 1-128 letters, "
                                               "digits, '.', '_', ':' or '-', starting with a letter or digit")
    assert 'is not a valid device id' in msg(one(device_id='p' * 200))
    assert 'is not a valid sensor name' in msg(one(sensor='flow rate'))

def test_epoch_units_by_magnitude():
    t = pd.Timestamp('2026-01-01 12:00:00.123456', tz='UTC')
    us = t.value // 1000
    vals = pd.Series([us // 1_000_000, us // 1000, us, us * 1000])
    ts, prob = parse_ts(vals)
    assert prob.isna().all()
    assert list(ts) == [t.floor('s'), t.floor('ms'), t, t]

def test_partial_acceptance_keeps_good_records_in_order():
    df = pd.concat([one(), one(value='x'), one(ts='2026-01-01T00:01:00Z', value='7')], ignore_index=True)
    res = validate(df, now=NOW)
    assert res.table.schema == LONG_SCHEMA
    assert res.accepted.tolist() == [0, 2] and res.table.column('value').to_pylist() == [1.0, 7.0]
    with pytest.raises(SchemaError, match=r"record 1, field 'value': 'x' is not a number"):
        check(df, now=NOW)

def test_wide_round_trip():
    df = pd.DataFrame({'device_id': ['a'] * 4 + ['b'] * 2, 'ts': pd.to_datetime(['2026-01-01'] * 2 + ['2026-01-02'] * 2 + ['2026-01-01'] * 2, utc=True),
                       'sensor': ['flow', 'power'] * 3, 'value': np.arange(6.0)})
    w = to_wide(df)
    assert list(w.columns) == ['flow', 'power'] and w.loc[('b', pd.Timestamp('2026-01-01', tz='UTC')), 'power'] == 5.0
    back = to_long(w)
    pd.testing.assert_frame_equal(back, df.sort_values(['device_id', 'sensor', 'ts'], ignore_index=True), check_dtype=False)

def test_wide_json_null_sensor_is_not_read_and_bool_ids_are_refused():
    "A wide record's null sensor means 'not read' (as a blank CSV cell): the record is accepted whole; true/false is no id."
    import json
    from iot2ml.parse import parse_body, check_parsed
    now = pd.Timestamp('2026-06-01', tz='UTC')
    p = parse_body(json.dumps({'device_id': 'p1', 'ts': '2026-01-01T00:00:00Z', 'flow': None, 'power': 1.0}).encode(), 'application/json')
    t, rec, errs = check_parsed(p, now=now)
    assert errs == [] and t.column('sensor').to_pylist() == ['power'] and rec.tolist() == [0]
    p = parse_body(json.dumps({'device_id': False, 'ts': '2026-01-01T00:00:00Z', 'power': 1.0}).encode(), 'application/json')
    t, rec, errs = check_parsed(p, now=now)
    assert t.num_rows == 0 and len(errs) == 1 and errs[0].field == 'device_id' and 'not a valid device id' in errs[0].message
