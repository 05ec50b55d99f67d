"""Hostile and careless input (issue 8, defects 4, 5, 8, 9) through a running `iot2ml serve` and through the MQTT
ingester's batch step: each gets a 4xx or a per-record rejection that names the problem, never a 500, and the valid
records of the same body or batch still land."""
import json, sys
from pathlib import Path
import httpx, pandas as pd, pytest
from helpers import wait_for
from projects import Server, post, wait_rows
from iot2ml.config import Settings
from iot2ml.serve.mqtt import MqttIngester
from iot2ml.ingest.devices import Registry
from iot2ml.serve.runtime import Service

G = lambda i, **kw: {'device_id': 'pump-0001', 'ts': f'2026-01-01T00:00:{i:02d}Z', 'sensor': 'flow',
                     'value': float(i)} | kw

def reasons(r) -> dict:
    return {e['index']: (e['field'], e['reason']) for e in r.json()['errors']}

def landed(s, n) -> list:
    "The values in the raw tier once it holds `n` readings (and not more)."
    df = wait_rows(s, n)
    assert len(df) == n, df
    return sorted(df['value'].tolist())

# ------------------------------------------------------------------------------------------------------------- HTTP

def test_no_500_from_surrogates_deep_nesting_or_a_repeated_csv_column(server):
    s = server
    i = 0
    for field in ('device_id', 'sensor', 'ts', 'value', 'unit'):
        i += 2
        bad = G(i + 1) | {field: '\ud800'}
        r = post(s, [G(i), bad])
        assert r.status_code == 200, r.text
        assert r.json()['accepted'] == 1 and reasons(r) == {1: (field, "'\\\\ud800' is not valid Unicode text (it "
                                                                       "holds a lone surrogate); send UTF-8 text")}
    # a wide key
    r = post(s, [G(20), {'device_id': 'pump-0001', 'ts': '2026-01-01T00:00:21Z', 'power': 1.0, '\ud800': 2.0}])
    assert r.status_code == 200 and r.json()['accepted'] == 1 and reasons(r)[1][0] == 'sensor'
    r = post(s, b'[' * 5000 + b']' * 5000)
    assert r.status_code == 400 and 'depth limit exceeded' in r.json()['error']
    r = post(s, b'device_id,device_id,ts,sensor,value\npump-0001,pump-0001,2026-01-01T00:00:30Z,flow,1\n',
             ct='text/csv')
    assert r.status_code == 400 and r.json()['error'] == ("the CSV header names column 'device_id' more than once; "
                                                          "give each column one name")
    assert landed(s, 6) == [2.0, 4.0, 6.0, 8.0, 10.0, 20.0]
    assert httpx.get(s.url + '/healthz').status_code == 200

def test_csv_ids_stay_strings_and_one_zone_rule(server):
    s = server
    csv = ('device_id,ts,sensor,value,unit\n007,2026-01-01T00:00:00Z,01,1,1e5\n'
           '007,2026-01-01 00:00:06,01,2,\n007,2026-01-01,01,3,\n007,1767225601,01,4,\n')
    r = post(s, csv, token='admin', ct='text/csv')
    assert r.status_code == 200 and r.json()['accepted'] == 2
    assert reasons(r) == {
        1: ('ts',
            "'2026-01-01 00:00:06' has no time zone, so it is ambiguous; add 'Z' for UTC or an offset such as +01:00"),
        2: ('ts', "'2026-01-01' is a date without a time of day; send a time with a zone such as 2026-01-01T00:00:00Z")}
    r = post(s, [G(5, ts='2026-01-02')])                                   # JSON: the same rule
    assert r.status_code == 422 and 'is a date without a time of day' in reasons(r)[0][1]
    df = wait_rows(s, 2)
    assert sorted(df[['device_id', 'sensor',
                      'unit']].fillna('-').values.tolist()) == [['007', '01', '-'], ['007', '01', '1e5']]

def test_booleans_and_numbers_are_not_readings_or_ids(server):
    s = server
    body = [G(0), G(1, value=True), G(2, quality=True), G(3, device_id=123), G(4, sensor=7), G(5, unit=5)]
    r = post(s, body, token='admin')
    assert r.status_code == 200 and r.json()['accepted'] == 1
    assert reasons(r) == {1: ('value', 'true is a boolean, not a number; send a number such as 12.5'),
                          2: ('quality', 'true is a boolean, not a quality flag; use 0 (good), 1 (suspect) or 2 (bad)'),
                          3: ('device_id',
                              '123 is a number, not a string; send the device id as a string such as "pump-0001"'),
                          4: ('sensor', '7 is a number, not a string; send the sensor name as a string such as "flow"'),
                          5: ('unit', '5 is a number, not a string; send the unit as a string such as "degC"')}
    assert landed(s, 1) == [0.0]

def test_caps_on_sensors_and_id_length_name_their_setting(tmp_path):
    s = Server(tmp_path, env={'IOT2ML_INGEST__MAX_SENSORS_PER_DEVICE': '3'})
    tok = Registry(tmp_path/'state'/'registry.sqlite').add_admin('ops').token
    s.tokens = {'admin': tok}
    s.start()
    try:
        wide = {'device_id': 'pump-0009', 'ts': '2026-01-01T00:00:00Z', **{f's{i}': 1.0 for i in range(1001)}}
        r = post(s, [wide], token='admin')
        assert r.status_code == 422 and reasons(r)[0] == ('sensor', "has 1,001 sensors, more than "
                                                                    "ingest.max_sensors_per_record (1,000); "
                                                                    "split it into records of fewer sensors or raise "
                                                                    "that setting")
        r = post(s, [G(0, device_id='p' * 129)], token='admin')
        assert r.status_code == 422 and 'more than ingest.max_id_length (128)' in reasons(r)[0][1]
        three = [G(i, sensor=n) for i, n in enumerate(('a', 'b', 'c'))]
        assert post(s, three, token='admin').json()['accepted'] == 3
        cap = ("device pump-0001 has 3 distinct sensors, as many as ingest.max_sensors_per_device allows; send "
               "readings of its known sensors or raise that setting")
        r = post(s, [G(10, sensor='d'), G(11, sensor='a')], token='admin')
        assert r.status_code == 200 and r.json()['accepted'] == 1 and reasons(r) == {0: ('sensor', cap)}
        wait_for(lambda: len(httpx.get(s.url + '/v1/devices/pump-0001/latest',
                                       headers={'Authorization': f'Bearer {tok}'}).json().get('sensors', {})) == 3)
        s.stop()
        # a new process learns the device's sensors from latest state
        s.start()
        r = post(s, [G(20, sensor='e'), G(21, sensor='b')], token='admin')
        assert r.status_code == 200 and r.json()['accepted'] == 1 and reasons(r) == {0: ('sensor', cap)}
        assert sorted(wait_rows(s, 5)['sensor']) == ['a', 'a', 'b', 'b', 'c']
    finally: s.stop()

# ------------------------------------------------------------------------------------------------------------- MQTT

@pytest.fixture
def mqtt_batch(tmp_path):
    ("`run(payloads) -> (lake table, dead letters)`: the ingester's batch step (parse, check, route, dead-letter) over "
     "messages of pump-0001.")
    svc = Service(Settings(root=tmp_path, ingest=dict(max_sensors_per_device=3)))
    ing = MqttIngester(svc)
    def run(payloads):
        msgs = [(k + 1, b'iot2ml/pump-0001/telemetry', p if isinstance(p, bytes) else json.dumps(p).encode()) for k,
                p in enumerate(payloads)]
        b = ing._prepare(msgs, 0)
        return b.tables.get('lake'), svc.deadletters.read()
    yield run
    svc.updater.close()

def test_mqtt_refuses_booleans_numeric_ids_long_names_and_too_many_sensors(mqtt_batch):
    pay = [G(0), G(1, value=True), G(2, quality=True), G(3, sensor=7), G(4, device_id=123), G(5, sensor='s' * 129),
           G(6, unit='u' * 129),
           {'ts': '2026-01-01T00:00:07Z', **{f'k{i}': 1.0 for i in range(1001)}}, G(8, ts='2026-01-02'),
           [G(9, sensor='b'), G(9, sensor='c'), G(9, sensor='d')]]
    lake, dead = mqtt_batch(pay)
    # d: a 4th sensor
    assert sorted(zip(lake['sensor'].to_pylist(), lake['value'].to_pylist())) == [('b', 9.0), ('c', 9.0), ('flow', 0.0)]
    why = dead.set_index('reason')['field'].to_dict()
    assert not [r for r in why if 'bug in iot2ml' in r], why
    expect = ['true is a boolean, not a number', 'true is a boolean, not a quality flag', '7 is a number, not a string',
              'more than ingest.max_id_length (128)', 'more than ingest.max_sensors_per_record (1,000)',
              'is a date without a time of day',
              'as many as ingest.max_sensors_per_device allows']
    for e in expect: assert any(e in r for r in why), (e, list(why))
    assert sum('more than ingest.max_id_length' in r for r in why) == 2     # the sensor name and the unit
    assert any('claims device 123' in r or '123 is a number' in r for r in why)

def test_mqtt_refuses_surrogates_and_deep_nesting_with_a_reason(mqtt_batch):
    pay = [G(0)] + [json.dumps(G(i + 1) | {f: '\ud800'}).encode() for i,
                    f in enumerate(('sensor', 'ts', 'value', 'unit'))]
    pay += [b'[' * 5000 + b']' * 5000]
    lake, dead = mqtt_batch(pay)
    assert lake['value'].to_pylist() == [0.0]
    why = dead['reason'].tolist()
    assert len(dead) == 5 and not [r for r in why if 'bug in iot2ml' in r], why
    assert sum('lone surrogate' in r for r in why) == 4, why
    assert sum('depth limit exceeded' in r or 'nested deeper than' in r for r in why) == 1, why

# ------------------------------------------------------------------------------------------------------------- files

def test_import_keeps_ids_as_text_and_takes_a_zone_only_when_named(tmp_path):
    from conftest import run
    (tmp_path/'iot2ml.toml').write_text('data_dir = "data"\n')
    (tmp_path/'a.csv').write_text('device_id,ts,sensor,value,unit\n007,2026-01-01 '
                                  '00:00:06,01,1,1e5\n007,2026-01-01,01,2,\n')
    out = run([str(Path(sys.executable).parent/'iot2ml'), 'import', 'a.csv'], tmp_path).stdout
    assert 'Imported 0 records' in out and '2 rejected' in out                      # no zone and no --tz; a bare date
    out = run([str(Path(sys.executable).parent/'iot2ml'), 'import', 'a.csv', '--tz', 'Europe/Berlin'], tmp_path).stdout
    # --tz names the zone; a date is still no time
    assert 'Imported 1 records' in out and '1 rejected' in out
    df = pd.read_parquet(tmp_path/'data'/'lake'/'raw'/'telemetry')
    assert df[['device_id', 'sensor',
               'unit']].values.tolist() == [['007', '01', '1e5']] and str(df['ts'][0]) == '2025-12-31 23:00:06+00:00'
