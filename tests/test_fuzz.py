"Property tests of the parser (hypothesis) and a fuzz of the API from its own OpenAPI schema (schemathesis): no 5xx."
import json, math
import pandas as pd, pytest
from hypothesis import given, settings, strategies as st, HealthCheck
from iot2ml.parse import parse_body, ParseError, check_parsed
from iot2ml.registry import Registry

NOW = pd.Timestamp('2026-06-01', tz='UTC')
scalar = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
                   st.text(max_size=30), st.sampled_from(['2026-01-01T00:00:00Z', '2026-01-01 00:00', '1767225600', 'NaN', '-inf']))
reading = st.dictionaries(st.sampled_from(['device_id', 'ts', 'sensor', 'value', 'unit', 'quality', 'flow', 'power', 'x' * 200]), scalar, max_size=7)
bodies = st.one_of(reading, st.lists(st.one_of(reading, scalar), max_size=20), st.fixed_dictionaries({'readings': st.lists(reading, max_size=5)}))

@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies)
def test_parser_never_crashes_and_accounts_for_every_record(body):
    raw = json.dumps(body, allow_nan=True).encode()
    try: p = parse_body(raw, 'application/json')
    except ParseError: return                                   # a whole-body error is a clean, explained refusal
    table, rec, errors = check_parsed(p, now=NOW)
    bad = {e.index for e in errors}
    assert all(0 <= e.index < p.records and e.message for e in errors)
    assert not (set(rec.tolist()) & bad)                         # no record both accepted and rejected
    assert set(rec.tolist()) | bad == set(range(p.records)) or p.frame.empty
    vals = table.column('value').to_pylist()
    assert all(math.isfinite(v) for v in vals)                   # nothing non-finite gets through

@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(['application/json', 'application/x-ndjson', 'text/csv', 'text/plain']))
def test_any_bytes_any_type(data, ct):
    try: p = parse_body(data, ct)
    except ParseError: return
    check_parsed(p, now=NOW)

# Bodies that once gave HTTP 500 (issue 8), sent as explicit cases beside the generated ones: lone surrogates (as JSON
# escapes and as raw UTF-8 bytes), deep nesting, a value nested past orjson's depth beside a valid reading, repeated CSV columns.
_OK = b'{"device_id":"pump-0001","ts":"2026-01-01T00:00:00Z","sensor":"flow","value":1}'
_SUR = b'"\\ud800"'
_NASTY = [*[(b'[' + _OK + b',' + _OK.replace(b'"' + k + b'"', _SUR, 1) + b']', 'application/json')
            for k in (b'pump-0001', b'2026-01-01T00:00:00Z', b'flow')],          # device_id, ts, sensor
          (b'[' + _OK + b',' + _OK.replace(b'1}', _SUR + b'}') + b']', 'application/json'),                 # value
          (_OK.replace(b'}', b',"unit":' + _SUR + b'}'), 'application/json'),                                 # unit
          (b'{"device_id":"pump-0001","ts":"2026-01-01T00:00:00Z",' + _SUR + b':1}', 'application/json'),   # a wide key
          (_OK.replace(b'flow', b'fl\xed\xa0\x80ow'), 'application/json'),                                 # raw surrogate bytes
          (_OK + b'\n' + _OK.replace(b'flow', b'\\ud800'), 'application/x-ndjson'),
          (b'[' * 5000 + b']' * 5000, 'application/json'), (b'[' * 5000 + b']' * 5000, 'application/x-ndjson'),
          (b'[' + _OK + b',' + _OK.replace(b':1}', b':' + b'[' * 300 + b']' * 300 + b'}') + b']', 'application/json'),
          (b'device_id,device_id,ts,sensor,value\npump-0001,pump-0001,2026-01-01T00:00:00Z,flow,1\n', 'text/csv'),
          (b'device_id,ts,flow,flow\npump-0001,2026-01-01T00:00:00Z,1,2\n', 'text/csv'),
          (b'device_id,ts,sensor,value\npump-0001,2026-01-01T00:00:00Z,fl\xed\xa0\x80ow,1\n', 'text/csv')]

def test_api_fuzzed_from_its_openapi_schema(tmp_path, small_champion):
    import httpx, schemathesis
    from hypothesis import given as hgiven
    from test_api import Server
    from iot2ml.mlregistry import ModelRegistry
    @schemathesis.serializer('application/x-ndjson')   # its schema is a string: send it as it is
    def _ndjson(ctx, value): return value if isinstance(value, bytes) else str(value).encode('utf-8', 'surrogatepass')
    models = ModelRegistry(tmp_path/'state'/'registry')
    models.promote(models.register(small_champion), reason='a champion, so /v1/predict runs its code')
    s = Server(tmp_path)
    reg = Registry(tmp_path/'state'/'registry.sqlite'); token = reg.add_admin('fuzz').token; reg.add('pump-0001')
    auth = {'Authorization': f'Bearer {token}'}
    s.start()
    try:
        schema = schemathesis.openapi.from_url(s.url + '/openapi.json')
        failures, calls = [], {}
        def check(case, r):
            calls.setdefault((case.method, case.path), []).append(r.status_code)
            if r.status_code >= 500: failures.append((case.method, case.path, r.status_code, r.text[:200], case.body if isinstance(case.body, bytes) else None))
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
        assert r.status_code == 200 and len(r.json()['predictions']) == 1, r.text   # a whole row is scored by the champion
        assert not failures, failures[:5]
        assert len(calls.get(('POST', '/v1/readings'), [])) >= 20, calls              # the ingest endpoint really was fuzzed
        assert {200, 422} <= set(calls[('POST', '/v1/predict')]), calls              # ... and predict past its 503
        assert httpx.get(s.url + '/healthz').status_code == 200                      # the service stayed up
    finally: s.stop()
