"Property tests of the parser (hypothesis) and a fuzz of the API from its own OpenAPI schema (schemathesis): no 5xx."
import json, math
import pandas as pd, pytest
from hypothesis import given, settings, strategies as st, HealthCheck
from iot2ml.ingest.parse import parse_body, ParseError, check_parsed
from iot2ml.schema import Limits
from iot2ml.ingest.devices import Registry

NOW = pd.Timestamp('2026-06-01', tz='UTC')
T0 = 1_767_225_600   # 2026-01-01T00:00:00Z
LIM = Limits(max_id_length=16, max_sensors_per_record=4)   # small caps, so records beyond them are cheap to make

def accounted(p, table, rec, errors) -> set:
    "Every record accepted or rejected, exactly once, and nothing non-finite accepted; the rejected records."
    bad = [e.index for e in errors]
    assert len(bad) == len(set(bad)), errors                                 # one error per rejected record
    assert all(0 <= e.index < p.records and e.message for e in errors)
    assert not (set(rec.tolist()) & set(bad))                                 # never both
    assert set(rec.tolist()) | set(bad) == set(range(p.records))             # never neither
    assert all(math.isfinite(v) for v in table.column('value').to_pylist())
    return set(bad)

# -- mostly valid readings, some with one defect injected: each record's fate is known in advance
DEFECTS = ['surrogate_device_id', 'surrogate_sensor', 'surrogate_ts', 'surrogate_value', 'surrogate_unit',
           'surrogate_key',
           'bool_value', 'bool_quality', 'bool_device_id', 'int_device_id', 'int_sensor', 'deep_value', 'naive_ts',
           'date_ts',
           'garbage_ts', 'future_ts', 'old_ts', 'too_wide', 'long_device_id', 'long_unit', 'duplicate', 'missing_value',
           'nan_value', 'text_value', 'not_an_object']
spec = st.tuples(st.booleans(),                                                       # wide
                 st.lists(st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-2**53, 2**53)),
                          min_size=1, max_size=3),
                 st.one_of(st.none(), st.none(), st.none(), st.sampled_from(DEFECTS)),   # mostly no defect
                 st.sampled_from(['iso', 'epoch']), st.sampled_from([None, 'degC']), st.sampled_from([None, 0, 2]),
                 st.sampled_from(['pump-1', 'p.2', '007']))

def make(i, wide, values, defect, tsform, unit, quality, dev, earlier):
    "Record i from its spec: (the record, the readings it must give if accepted, or None if it must be rejected)."
    ts = T0 + i
    sensors = [f's{k}' for k in range(len(values))]
    base = {'device_id': dev,
            'ts': f"{pd.Timestamp(ts, unit='s', tz='UTC'):%Y-%m-%dT%H:%M:%SZ}" if tsform == 'iso' else ts}
    if unit: base['unit'] = unit
    if quality is not None: base['quality'] = quality
    if defect in ('surrogate_key', 'too_wide'): wide = True
    if defect == 'duplicate':
        if not earlier: defect = None
        else: return {**earlier[0], 'value': 1.0}, None
    if defect == 'too_wide':
        values = values + [0.0] * (LIM.max_sensors_per_record + 1 - len(values))
        sensors = [f's{k}' for k in range(len(values))]
    rec = {**base, **dict(zip(sensors, values))} if wide else {**base, 'sensor': sensors[0], 'value': values[0]}
    if not wide: sensors, values = sensors[:1], values[:1]
    vkey = sensors[0] if wide else 'value'
    if defect is None: return rec, [(dev, ts * 10**6, s, float(v), unit, quality or 0) for s, v in zip(sensors, values)]
    if defect == 'not_an_object': return 7, None
    kind, _, fld = defect.partition('_')
    fld = vkey if fld == 'value' else fld
    if kind == 'surrogate' and fld == 'key': rec['\ud800'] = 1.0
    elif kind == 'surrogate': rec[fld if fld != 'sensor' or not wide else sensors[0]] = '\ud800'
    elif kind in ('bool', 'int'):
        rec[fld if fld != 'sensor' or not wide else 'x'] = ((True if kind == 'bool' else 123)
                                                            if not (wide and fld == 'sensor') else None)
    if defect == 'int_sensor' and wide: rec = {**base, 'sensor': 7, 'value': 1.0}
    if defect == 'deep_value': rec[vkey] = json.loads('[' * 300 + ']' * 300)
    ts_bad = {'naive_ts': '2026-01-01 00:00:00', 'date_ts': '2026-01-01', 'garbage_ts': 'soon',
              'future_ts': '2027-01-01T00:00:00Z',
              'old_ts': '1999-01-01T00:00:00Z'}
    if defect in ts_bad: rec['ts'] = ts_bad[defect]
    if defect == 'long_device_id': rec['device_id'] = 'd' * (LIM.max_id_length + 1)
    if defect == 'long_unit': rec['unit'] = 'u' * (LIM.max_id_length + 1)
    if defect == 'missing_value': rec.pop(vkey) if not wide else rec.update({vkey: None, **{s: None for s in sensors}})
    if defect == 'nan_value': rec[vkey] = float('nan')
    if defect == 'text_value': rec[vkey] = 'x'
    return rec, None

@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(spec, min_size=1, max_size=12), st.sampled_from(['list', 'readings', 'ndjson']))
def test_parser_never_crashes_and_accounts_for_every_record(specs, shape):
    recs, expect, earlier = [], [], []
    for i, s in enumerate(specs):
        r, readings = make(i, *s, earlier)
        recs.append(r)
        expect.append(readings)
        if readings is not None and isinstance(r, dict) and 'sensor' in r: earlier.append(r)
    raw = ('\n'.join(json.dumps(r) for r in recs) if shape == 'ndjson'
           else json.dumps(recs if shape == 'list' else {'readings': recs})).encode()
    p = parse_body(raw, 'application/x-ndjson' if shape == 'ndjson' else 'application/json')
    table, rec, errors = check_parsed(p, now=NOW, limits=LIM)
    bad = accounted(p, table, rec, errors)
    assert bad == {i for i, e in enumerate(expect) if e is None}, (errors, expect)
    got = sorted(zip(rec.tolist(), *(table.column(c).to_pylist() for c in ('device_id', 'ts', 'sensor', 'value', 'unit',
                                                                           'quality'))))
    want = sorted((i, d, t, s, v, u, q) for i, e in enumerate(expect) if e for d, t, s, v, u, q in e)
    # accepted values are the inputs
    assert [(i, d, int(t.timestamp() * 10**6), s, v, u, q) for i, d, t, s, v, u, q in got] == want

# -- junk of any shape: nothing crashes and every record is accounted for
scalar = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
                   st.text(max_size=30), st.sampled_from(['2026-01-01T00:00:00Z', '2026-01-01 00:00', '1767225600',
                                                          'NaN', '-inf', '\ud800']))
reading = st.dictionaries(st.sampled_from(['device_id', 'ts', 'sensor', 'value', 'unit', 'quality', 'flow', 'power',
                                           'x' * 200, '\udfff']), scalar, max_size=7)
bodies = st.one_of(reading, st.lists(st.one_of(reading, scalar), max_size=20),
                   st.fixed_dictionaries({'readings': st.lists(reading, max_size=5)}))

@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies)
def test_junk_records_are_each_accepted_or_rejected(body):
    try: p = parse_body(json.dumps(body, allow_nan=True).encode(), 'application/json')
    except ParseError: return                                   # a whole-body error is a clean, explained refusal
    accounted(p, *check_parsed(p, now=NOW, limits=LIM))

# -- any bytes as any type; valid bodies (JSON, NDJSON, CSV) mixed in, whose readings must all land as sent
rows = st.lists(st.tuples(st.sampled_from(['pump-1', 'p.2', '007', '1e5']), st.sampled_from(['flow', '01', 'x_y']),
                          st.floats(-1e9, 1e9, allow_nan=False)), min_size=1, max_size=8)

def valid_body(rs, ct):
    ("A body of the readings `rs` (one second apart) in format `ct`, and the readings (device, ts in us, sensor, "
     "value) it must give.")
    recs = [{'device_id': d, 'ts': f"{pd.Timestamp(T0 + i, unit='s', tz='UTC'):%Y-%m-%dT%H:%M:%SZ}", 'sensor': s,
             'value': v} for i, (d, s, v) in enumerate(rs)]
    data = (json.dumps(recs) if ct == 'application/json'
            else '\n'.join(map(json.dumps, recs)) if ct == 'application/x-ndjson'
            else 'device_id,ts,sensor,value\n'
                 + ''.join(f"{r['device_id']},{r['ts']},{r['sensor']},{r['value']!r}\n" for r in recs))
    return data.encode(), ct, sorted((d, (T0 + i) * 10**6, s, v) for i, (d, s, v) in enumerate(rs))

def mutated(body, at, junk):
    data, ct, _ = body
    k = at % (len(data) + 1)
    return data[:k] + junk + data[k:], ct, None

CT = st.sampled_from(['application/json', 'application/x-ndjson', 'text/csv', 'text/plain'])
valid = st.builds(valid_body, rows, st.sampled_from(['application/json', 'application/x-ndjson', 'text/csv']))
cases = st.one_of(st.tuples(st.binary(max_size=300), CT, st.none()), valid,
                  st.builds(mutated, valid, st.integers(0, 10**6), st.binary(min_size=1, max_size=3)))

@settings(max_examples=200, deadline=None)
@given(cases)
def test_any_bytes_any_type(case):
    data, ct, want = case
    try: p = parse_body(data, ct)
    except ParseError:
        assert want is None
        return
    table, rec, errors = check_parsed(p, now=NOW)
    accounted(p, table, rec, errors)
    if want is not None:
        got = sorted(zip(*(table.column(c).to_pylist() for c in ('device_id', 'ts', 'sensor', 'value'))))
        assert errors == [] and [(d, int(t.timestamp() * 10**6), s, v) for d, t, s, v in got] == want

# Bodies that once gave HTTP 500 (issue 8), sent as explicit cases beside the generated ones: lone surrogates (as JSON
# escapes and as raw UTF-8 bytes), deep nesting, a value nested past orjson's depth beside a valid reading, repeated CSV
# columns.
_OK = b'{"device_id":"pump-0001","ts":"2026-01-01T00:00:00Z","sensor":"flow","value":1}'
_SUR = b'"\\ud800"'
_NASTY = [*[(b'[' + _OK + b',' + _OK.replace(b'"' + k + b'"', _SUR, 1) + b']', 'application/json')
            for k in (b'pump-0001', b'2026-01-01T00:00:00Z', b'flow')],          # device_id, ts, sensor
          (b'[' + _OK + b',' + _OK.replace(b'1}', _SUR + b'}') + b']', 'application/json'),                 # value
          (_OK.replace(b'}', b',"unit":' + _SUR + b'}'), 'application/json'),                                 # unit
          (b'{"device_id":"pump-0001","ts":"2026-01-01T00:00:00Z",' + _SUR + b':1}', 'application/json'),   # a wide key
          # raw surrogate bytes
          (_OK.replace(b'flow', b'fl\xed\xa0\x80ow'), 'application/json'),
          (_OK + b'\n' + _OK.replace(b'flow', b'\\ud800'), 'application/x-ndjson'),
          (b'[' * 5000 + b']' * 5000, 'application/json'), (b'[' * 5000 + b']' * 5000, 'application/x-ndjson'),
          (b'[' + _OK + b',' + _OK.replace(b':1}', b':' + b'[' * 300 + b']' * 300 + b'}') + b']', 'application/json'),
          (b'device_id,device_id,ts,sensor,value\npump-0001,pump-0001,2026-01-01T00:00:00Z,flow,1\n', 'text/csv'),
          (b'device_id,ts,flow,flow\npump-0001,2026-01-01T00:00:00Z,1,2\n', 'text/csv'),
          # a wide CSV whose only column is 'value'
          (b'device_id,ts,value\npump-0001,yesterday,1\n', 'text/csv'),
          (_OK.replace(b':1}', b':' + b'9' * 400 + b'}'), 'application/json'),        # an integer beyond a float
          (b'device_id,ts,sensor,value\npump-0001,2026-01-01T00:00:00Z,fl\xed\xa0\x80ow,1\n', 'text/csv')]

def test_api_fuzzed_from_its_openapi_schema(tmp_path, small_champion):
    import httpx, schemathesis
    from hypothesis import given as hgiven
    from projects import Server
    from iot2ml.ml.registry import ModelRegistry
    @schemathesis.serializer('application/x-ndjson')   # its schema is a string: send it as it is
    def _ndjson(ctx, value): return value if isinstance(value, bytes) else str(value).encode('utf-8', 'surrogatepass')
    models = ModelRegistry(tmp_path/'state'/'registry')
    models.promote(models.register(small_champion), reason='a champion, so /v1/predict runs its code')
    s = Server(tmp_path)
    reg = Registry(tmp_path/'state'/'registry.sqlite')
    token = reg.add_admin('fuzz').token
    reg.add('pump-0001')
    auth = {'Authorization': f'Bearer {token}'}
    s.start()
    try:
        schema = schemathesis.openapi.from_url(s.url + '/openapi.json')
        failures, calls = [], {}
        def check(case, r):
            calls.setdefault((case.method, case.path), []).append(r.status_code)
            if r.status_code >= 500: failures.append((case.method, case.path, r.status_code, r.text[:200],
                                                      case.body if isinstance(case.body, bytes) else None))
        for result in schema.get_all_operations():
            op = result.ok()
            @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
            @hgiven(case=op.as_strategy())
            def run(case): check(case, case.call(headers=auth))
            run()
        readings, predict = schema['/v1/readings']['POST'], schema['/v1/predict']['POST']
        for body, ct in _NASTY: check(c := readings.Case(body=body, media_type=ct), c.call(headers=auth))
        features = json.loads((small_champion/'model.json').read_text())['features']
        row = {f: 0.0 for f in features} | {'device_id': 'pump-0001', 'ts': '2026-01-14T23:00:00Z'}
        r = predict.Case(body={'rows': [row]}, media_type='application/json').call(headers=auth)
        # a whole row is scored by the champion
        assert r.status_code == 200 and len(r.json()['predictions']) == 1, r.text
        assert not failures, failures[:5]
        # the ingest endpoint really was fuzzed
        assert len(calls.get(('POST', '/v1/readings'), [])) >= 20, calls
        assert {200, 422} <= set(calls[('POST', '/v1/predict')]), calls              # ... and predict past its 503
        assert httpx.get(s.url + '/healthz').status_code == 200                      # the service stayed up
    finally: s.stop()
