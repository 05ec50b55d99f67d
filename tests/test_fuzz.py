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

def test_api_fuzzed_from_its_openapi_schema(tmp_path):
    import schemathesis
    from hypothesis import given as hgiven
    from test_api import Server
    s = Server(tmp_path)
    reg = Registry(tmp_path/'state'/'registry.sqlite'); token = reg.add_admin('fuzz').token; reg.add('pump-0001')
    s.start()
    try:
        schema = schemathesis.openapi.from_url(s.url + '/openapi.json')
        failures, calls = [], {}
        for result in schema.get_all_operations():
            op = result.ok()
            @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
            @hgiven(case=op.as_strategy())
            def run(case):
                r = case.call(headers={'Authorization': f'Bearer {token}'})
                calls[(case.method, case.path)] = calls.get((case.method, case.path), 0) + 1
                documented = r.status_code == 503 and 'no champion model yet' in r.text   # /v1/predict with no model promoted
                if r.status_code >= 500 and not documented: failures.append((case.method, case.path, r.status_code, r.text[:200]))
            run()
        assert not failures, failures[:5]
        assert calls.get(('POST', '/v1/readings'), 0) >= 20, calls     # the ingest endpoint really was fuzzed
        import httpx
        assert httpx.get(s.url + '/healthz').status_code == 200      # the service stayed up
    finally: s.stop()
