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
    assert msg(one(**{field: ...})) == (f"record 0, field '{field}': is missing; every reading needs device_id, ts, "
                                        f"sensor, value")
    assert msg(one(**{field: None})) == (f"record 0, field '{field}': is missing; every reading needs device_id, ts, "
                                         f"sensor, value")

def test_non_numeric_value():
    assert msg(one(value='12,5')) == "record 0, field 'value': '12,5' is not a number; send a number such as 12.5"

@pytest.mark.parametrize('v,shown', [(float('nan'), 'nan'), (float('inf'), 'inf'), ('-inf', '-inf'), ('NaN', 'nan')])
def test_nan_inf(v, shown):
    assert msg(one(value=v)) == (f"record 0, field 'value': is {shown}, not a finite number; send a finite number or "
                                 f"leave the reading out")

def test_before_2000():
    assert msg(one(ts='1999-12-31T23:59:59Z')) == ("record 0, field 'ts': 1999-12-31T23:59:59+00:00 is before "
                                                   "2000-01-01; "
                                                   "check the device clock or the time unit")

def test_far_future():
    assert msg(one(ts='2026-01-11T00:00:01Z')) == ("record 0, field 'ts': 2026-01-11T00:00:01+00:00 is more than a day "
                                                   "in the future; "
                                                   "check the device clock")

def test_no_zone_is_ambiguous():
    assert msg(one(ts='2026-01-01 10:00')) == ("record 0, field 'ts': '2026-01-01 10:00' has no time zone, so it is "
                                               "ambiguous; "
                                               "add 'Z' for UTC or an offset such as +01:00")

def test_dst_fold_is_ambiguous_in_named_zone():
    assert msg(one(ts='2025-10-26 02:30'), assume_tz='Europe/Berlin') == (
        "record 0, field 'ts': '2025-10-26 02:30' does not name one instant in Europe/Berlin (a daylight-saving "
        "change); "
        "add an offset such as +01:00")
    ok = validate(one(ts='2025-10-26 04:30'), now=NOW, assume_tz='Europe/Berlin')
    assert ok.table.column('ts')[0].as_py() == pd.Timestamp('2025-10-26 03:30', tz='UTC')

def test_not_a_time():
    assert msg(one(ts='yesterday')) == ("record 0, field 'ts': 'yesterday' is not an ISO 8601 time; send e.g. "
                                        "2026-01-01T12:00:00Z")

def test_duplicate_key_in_batch():
    df = pd.concat([one(), one(value=2.0), one(ts='2026-01-01T00:00:00+00:00', value=3.0)], ignore_index=True)
    res = validate(df, now=NOW)
    assert res.accepted.tolist() == [0]
    assert [str(e) for e in res.errors] == [
        "record 1, field 'ts': duplicates record 0 (same device_id, sensor and ts); send each reading once",
        "record 2, field 'ts': duplicates record 0 (same device_id, sensor and ts); send each reading once"]

def test_bad_ids_and_control_characters():
    assert msg(one(device_id='pump\x001')) == ("record 0, field 'device_id': 'pump\\\\x001' is not a valid device id; "
                                               "use 1-128 letters, "
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
    df = pd.DataFrame({'device_id': ['a'] * 4 + ['b'] * 2,
                       'ts': pd.to_datetime(['2026-01-01'] * 2 + ['2026-01-02'] * 2 + ['2026-01-01'] * 2, utc=True),
                       'sensor': ['flow', 'power'] * 3, 'value': np.arange(6.0)})
    w = to_wide(df)
    assert list(w.columns) == ['flow', 'power'] and w.loc[('b', pd.Timestamp('2026-01-01', tz='UTC')), 'power'] == 5.0
    back = to_long(w)
    pd.testing.assert_frame_equal(back, df.sort_values(['device_id', 'sensor', 'ts'], ignore_index=True),
                                  check_dtype=False)

def test_wide_json_null_sensor_is_not_read_and_bool_ids_are_refused():
    ("A wide record's null sensor means 'not read' (as a blank CSV cell): the record is accepted whole; true/false is "
     "no id.")
    import json
    from iot2ml.ingest.parse import parse_body, check_parsed
    now = pd.Timestamp('2026-06-01', tz='UTC')
    p = parse_body(json.dumps({'device_id': 'p1', 'ts': '2026-01-01T00:00:00Z', 'flow': None, 'power': 1.0}).encode(),
                   'application/json')
    t, rec, errs = check_parsed(p, now=now)
    assert errs == [] and t.column('sensor').to_pylist() == ['power'] and rec.tolist() == [0]
    p = parse_body(json.dumps({'device_id': False, 'ts': '2026-01-01T00:00:00Z', 'power': 1.0}).encode(),
                   'application/json')
    t, rec, errs = check_parsed(p, now=now)
    assert t.num_rows == 0
    assert len(errs) == 1
    assert errs[0].field == 'device_id'
    assert errs[0].message.startswith('false is a boolean, not a string')

# -- hostile and careless input (issue 8: defects 4, 5, 8, 9), at the parser: a record error or a whole-body ParseError,
# never a crash
import json
from iot2ml.ingest.parse import parse_body, check_parsed, ParseError
from iot2ml.schema import Limits

NOW6 = pd.Timestamp('2026-11-05', tz='UTC')
GOOD = dict(device_id='pump-0001', ts='2026-11-04T00:00:00Z', sensor='flow', value=1.5)

def parsed(body, ct='application/json', **kw):
    ("check_parsed of a body: (accepted readings as dicts, accepted record numbers, errors as {record: (field, "
     "message)}).")
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    t, rec, errs = check_parsed(parse_body(raw, ct), now=NOW6, **kw)
    out = {e.index: (e.field, e.message) for e in errs}
    assert len(out) == len(errs), errs   # one error per rejected record
    return t.to_pylist(), rec.tolist(), out

@pytest.mark.parametrize('field', ['device_id', 'sensor', 'ts', 'value', 'unit'])
def test_a_lone_surrogate_is_a_record_error_naming_the_field(field):
    bad = GOOD | {'ts': '2026-11-04T00:00:01Z', field: '\ud800'}
    rows, rec, errs = parsed([GOOD, bad])
    assert rec == [0] and rows[0]['value'] == 1.5
    assert errs == {1: (field, "'\\\\ud800' is not valid Unicode text (it holds a lone surrogate); send UTF-8 text")}

def test_a_lone_surrogate_as_a_wide_key_is_a_record_error():
    wide = {'device_id': 'pump-0001', 'ts': '2026-11-04T00:00:01Z', 'power': 2.0, '\ud800': 3.0}
    rows, rec, errs = parsed([GOOD, wide])
    assert rec == [0] and [r['sensor'] for r in rows] == ['flow']       # the wide record is rejected whole, once
    assert list(errs) == [1] and errs[1][0] == 'sensor' and 'not valid Unicode text' in errs[1][1]

def test_deep_nesting_is_refused_cleanly():
    with pytest.raises(ParseError, match='depth limit exceeded'): parse_body(b'[' * 5000 + b']' * 5000,
                                                                             'application/json')
    with pytest.raises(ParseError, match='depth limit exceeded'): parse_body(b'[' * 5000 + b'NaN' + b']' * 5000,
                                                                             'application/json')
    ndjson = (json.dumps(GOOD) + '\n' + '[' * 5000 + ']' * 5000 + '\n').encode()
    rows, rec, errs = parsed(ndjson, 'application/x-ndjson')
    assert rec == [0] and errs[1][0] == '-' and 'depth limit exceeded' in errs[1][1]
    # deep, but JSON that parses
    deep = GOOD | {'ts': '2026-11-04T00:00:01Z', 'value': json.loads('[' * 900 + ']' * 900)}
    rows, rec, errs = parsed([GOOD, deep])
    assert rec == [0] and errs[1][0] == 'value'
    assert errs[1][1].endswith('is a list, not a number; send a number such as 12.5')

def test_csv_with_a_repeated_column_is_refused():
    with pytest.raises(ParseError,
                       match="the CSV header names column 'device_id' more than once; give each column one name"):
        parse_body(b'device_id,device_id,ts,sensor,value\np1,p1,2026-11-04T00:00:00Z,flow,1\n', 'text/csv')

def test_csv_ids_stay_strings():
    rows, rec, errs = parsed(b'device_id,ts,sensor,value,unit\n007,2026-11-04T00:00:00Z,01,1,1e5\n'
                             b'1e5,2026-11-04T00:00:00Z,2,3,\n', 'text/csv')
    assert errs == {}
    assert [(r['device_id'], r['sensor'], r['unit']) for r in rows] == [('007', '01', '1e5'), ('1e5', '2', None)]
    # wide: sensors are headers
    rows, rec, errs = parsed(b'device_id,ts,01,1e5\n007,2026-11-04T00:00:00Z,1.5,2\n', 'text/csv')
    assert errs == {}
    assert [(r['device_id'], r['sensor'], r['value']) for r in rows] == [('007', '01', 1.5), ('007', '1e5', 2.0)]

NO_ZONE = "has no time zone, so it is ambiguous; add 'Z' for UTC or an offset such as +01:00"
DATE_ONLY = "is a date without a time of day; send a time with a zone such as 2026-01-01T00:00:00Z"

def test_one_time_zone_rule_for_csv_and_json():
    csv = (b'device_id,ts,sensor,value\np1,2026-11-04 '
           b'00:00:06,flow,1\np1,2026-11-03,flow,2\np1,1793750400,flow,3\np1,2026-11-04T00:00:07+01:00,flow,4\n')
    rows, rec, errs = parsed(csv, 'text/csv')
    assert rec == [2, 3] and errs == {0: ('ts', f"'2026-11-04 00:00:06' {NO_ZONE}"),
                                      1: ('ts', f"'2026-11-03' {DATE_ONLY}")}
    body = [GOOD | {'ts': t, 'value': float(i)} for i, t in enumerate(['2026-11-04 00:00:06', '2026-11-03', 1793750400,
                                                                       '2026-11-04T00:00:07+01:00'])]
    assert parsed(body)[1:] == (rec, errs)
    # `iot2ml import --tz`: zone-less times, not bare dates
    rows, rec, errs = parsed(csv, 'text/csv', assume_tz='Europe/Berlin')
    assert rec == [0, 2, 3] and errs == {1: ('ts', f"'2026-11-03' {DATE_ONLY}")}
    assert str(rows[0]['ts']) == '2026-11-03 23:00:06+00:00'

def test_booleans_are_not_readings():
    body = [GOOD | {'ts': f'2026-11-04T00:00:0{i}Z', **kw} for i,
            kw in enumerate([{}, {'value': True}, {'quality': True}, {'ts': False}])]
    rows, rec, errs = parsed(body)
    assert rec == [0] and errs == {1: ('value', "true is a boolean, not a number; send a number such as 12.5"),
                                   2: ('quality',
                                       "true is a boolean, not a quality flag; use 0 (good), 1 (suspect) or 2 (bad)"),
                                   3: ('ts', "false is a boolean, not a time; send an ISO 8601 time with a zone such "
                                             "as 2026-01-01T12:00:00Z, or epoch seconds")}
    rows, rec, errs = parsed(b'device_id,ts,sensor,value\np1,2026-11-04T00:00:00Z,flow,true\n', 'text/csv')
    assert rec == [] and errs[0][0] == 'value'

def test_ids_and_units_must_be_strings():
    body = [GOOD | {'ts': f'2026-11-04T00:00:0{i}Z', **kw} for i,
            kw in enumerate([{}, {'device_id': 123}, {'sensor': 7}, {'unit': 5}, {'device_id': False}])]
    rows, rec, errs = parsed(body)
    assert rec == [0] and errs == {1: ('device_id', '123 is a number, not a string; send the device id as a string '
                                                    'such as "pump-0001"'),
                                   2: ('sensor',
                                       '7 is a number, not a string; send the sensor name as a string such as "flow"'),
                                   3: ('unit', '5 is a number, not a string; send the unit as a string such as "degC"'),
                                   4: ('device_id', 'false is a boolean, not a string; send the device id as a string '
                                                    'such as "pump-0001"')}

def test_caps_on_sensors_per_record_and_id_length():
    wide = {'device_id': 'pump-0001', 'ts': '2026-11-04T00:00:01Z', **{f's{i}': 1.0 for i in range(1001)}}
    rows, rec, errs = parsed([GOOD, wide])
    assert rec == [0] and errs == {1: ('sensor', "has 1,001 sensors, more than ingest.max_sensors_per_record (1,000); "
                                                 "split it into records of fewer sensors or raise that setting")}
    assert parsed([wide], limits=Limits(max_sensors_per_record=2000))[2] == {}
    for field, what in (('device_id', 'device id'), ('sensor', 'sensor name'), ('unit', 'unit')):
        # fast and exact path
        for body in ([GOOD | {field: 'a' * 129}], [GOOD | {field: 'a' * 129},
                                                   GOOD | {'ts': '2026-11-04T00:00:01Z', 'value': 'x'}]):
            rows, rec, errs = parsed(body)
            assert rec == [] and errs[0] == (field, f"is not a valid {what}: it is 129 characters long, more than "
                                                    f"ingest.max_id_length (128); "
                                                    "shorten it or raise that setting")
        assert parsed([GOOD | {field: 'a' * 129}], limits=Limits(max_id_length=200))[1] == [0]
        assert parsed([GOOD | {field: 'a' * 20}],
                      limits=Limits(max_id_length=16))[2][0][1].endswith('it is 20 characters long, more than '
                                                                         'ingest.max_id_length (16); shorten it or '
                                                                         'raise that setting')

def test_repeated_time_strings_parse_the_same_in_every_batch_and_zone():
    ("A flood repeats one time string; its parse is remembered per zone, so the next batch and another zone give their "
     "own answers.")
    naive, bad = ['2026-01-01 12:00:00'] * 100, ['yesterday'] * 100
    for _ in range(2):   # the second batch is answered from what the first one parsed
        ts, prob = parse_ts(pd.Series(naive, dtype=object))
        assert ts.isna().all() and prob.str.contains('time zone').all()
        ts, prob = parse_ts(pd.Series(naive, dtype=object), assume_tz='Europe/Berlin')
        assert (ts == pd.Timestamp('2026-01-01 11:00:00', tz='UTC')).all() and prob.isna().all()
        ts, prob = parse_ts(pd.Series(bad + [None], dtype=object))
        assert ts.isna().all() and prob[:100].str.contains('ISO 8601').all() and prob[100] is None

def test_an_integer_too_large_for_a_float_is_rejected_as_not_finite():
    "JSON allows 10**400; it was an OverflowError (a 500 over HTTP, 'a bug in iot2ml' over MQTT). Now: not finite."
    big = 10**400
    ts = ['2026-01-01T00:00:00Z', '2026-01-01T00:01:00Z', '2026-01-01T00:02:00Z']
    df = pd.DataFrame({'device_id': ['p1'] * 3, 'ts': ts, 'sensor': ['flow'] * 3,
                       'value': pd.Series([big, -big, 1], dtype=object)})
    res = validate(df, now=pd.Timestamp('2026-01-02', tz='UTC'))
    assert [(e.index, e.field) for e in res.errors] == [(0, 'value'), (1, 'value')]
    assert 'not a finite number' in res.errors[0].message and res.table.num_rows == 1

def test_a_duplicate_in_wide_records_names_the_record_it_repeats():
    "The record numbers of a wide body, not its readings' (it named reading 2 as 'record 2'; over MQTT an IndexError)."
    t1, t2 = '2026-01-01T00:00:00Z', '2026-01-01T00:01:00Z'
    body = json.dumps([{'device_id': 'p1', 'ts': t1, 'flow': 1, 'temp': 2}, {'device_id': 'p1', 'ts': t2, 'flow': 1},
                       {'device_id': 'p1', 'ts': t2, 'flow': 3}]).encode()
    table, rec, errors = check_parsed(parse_body(body, 'application/json'), now=pd.Timestamp('2026-01-02', tz='UTC'))
    assert [(e.index, e.field) for e in errors] == [(2, 'ts')] and 'duplicates record 1 ' in errors[0].message, errors
    assert table.num_rows == 3
