"The live simulator streams a fleet in real time into a running service."
import time
from conftest import run, BIN
from iot2ml.lake.store import Lake
from iot2ml.ingest.devices import Registry
from projects import Server, wait_rows

def test_live_http_into_the_service(tmp_path):
    s = Server(tmp_path)
    token = Registry(tmp_path/'state'/'registry.sqlite').add_admin('sim').token
    s.start()
    try:
        r = run([str(BIN/'iot2ml'), 'stream', 'http', '--devices', '5', '--rate', '4', '--seconds', '2',
                 '--url', s.url, '--token', token], tmp_path)
        assert 'errors' in r.stdout and ', 0 errors' in r.stdout, r.stdout
        sent = int(r.stdout.split('(')[1].split(' readings')[0].replace(',', ''))
        df = wait_rows(s, sent)
        assert len(df) == sent and df['device_id'].nunique() == 5 and df['sensor'].nunique() == 7
        assert (df['value'].groupby(df['sensor']).mean() > 0).loc[['flow', 'power', 'discharge_pressure']].all()
    finally: s.stop()
