"""Soak: N simulated devices at R messages/s each for S seconds over MQTT into the lake (default 10,000 x 1/s x 600 s).

A real Mosquitto (started on a free loopback port), a real `iot2ml mqtt` ingester process and the live simulator
(`iot2ml stream mqtt`, publishing as a gateway that has every device behind it, QoS 1). Every 10 s it
samples the ingester's RSS and the readings landed; at the end it checks that the count the broker acknowledged to
the publisher equals the count in the lake, and prints throughput per window and the memory trend.

Example:
  python bench/bench_soak.py                          # the issue's soak: 10,000 devices, 1 msg/s, 10 minutes
  python bench/bench_soak.py --devices 1000 --seconds 60
"""
import argparse, json, os, shutil, signal, subprocess, sys, tempfile, time
from pathlib import Path
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/'tests'))
from mqtt_broker import start_broker            # noqa: E402  (the tests' broker helper: free port, generated config)
from iot2ml.lake.store import Lake                     # noqa: E402
from iot2ml.ingest.devices import Registry, write_broker_config   # noqa: E402
from iot2ml.sim.fleet import device_ids           # noqa: E402

BIN = Path(sys.executable).parent

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--devices', type=int, default=10_000)
    ap.add_argument('--rate', type=float, default=1.0)
    ap.add_argument('--seconds', type=float, default=600)
    ap.add_argument('--keep', action='store_true', help="keep the temp folder")
    a = ap.parse_args()
    d = Path(tempfile.mkdtemp(prefix='iot2ml-soak-'))
    broker = ing = None
    try:
        reg = Registry(d/'state'/'registry.sqlite')
        gw = reg.add('soak-gw', kind='gateway').token
        for dev in device_ids(a.devices): reg.add(dev, gateway_id='soak-gw')
        bc = write_broker_config(reg, d/'mq', d/'mq'/'ingest.secret')
        broker = start_broker(d, bc.passwd, bc.acl)
        (d/'iot2ml.toml').write_text(f'[mqtt]\nport = {broker.port}\npassword_file = '
                                     f'"{bc.ingest_secret}"\n[ingest]\nflush_seconds = 5\n')
        log = open(d/'ingest.log', 'w')
        ing = subprocess.Popen([str(BIN/'iot2ml'), 'mqtt'], cwd=d, stdout=log, stderr=subprocess.STDOUT)
        proc = psutil.Process(ing.pid)
        time.sleep(2)
        pub = subprocess.Popen([str(BIN/'iot2ml'), 'stream', 'mqtt', '--devices', str(a.devices),
                                '--rate', str(a.rate),
                                '--seconds', str(a.seconds), '--port', str(broker.port), '--username', 'soak-gw',
                                '--token', gw],
                               cwd=d, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lake = Lake(d/'data'/'lake')
        samples = []
        t0 = time.time()
        def landed():
            try: return int(lake.sql("SELECT count(*) AS n FROM raw.telemetry")['n'][0])
            except Exception: return 0
        while pub.poll() is None:
            time.sleep(10)
            samples.append((time.time() - t0, proc.memory_info().rss / 2**20, landed()))
            print(f"  t={samples[-1][0]:5.0f} s  ingester RSS {samples[-1][1]:7.1f} MiB  readings in the lake "
                  f"{samples[-1][2]:,}", flush=True)
        out = pub.stdout.read()
        print(out.strip().splitlines()[-1])
        sent = out.split('sent ')[1]
        readings = int(sent.split('(')[1].split(' readings')[0].replace(',', ''))
        acked = int(out.split(', ')[1].split(' acknowledged')[0].replace(',', '')) if ' acknowledged' in out else None
        deadline = time.time() + 120
        while landed() < readings and time.time() < deadline: time.sleep(2)
        ing.send_signal(signal.SIGTERM)
        ing.wait(60)
        n = landed()
        rates = [(b[2] - a_[2]) / (b[0] - a_[0]) for a_, b in zip(samples, samples[1:])]
        mid = rates[len(rates) // 4: -max(1, len(rates) // 4)] or rates
        rss = [s[1] for s in samples]
        print(json.dumps(dict(devices=a.devices, rate=a.rate, seconds=a.seconds, messages_acknowledged=acked,
                              readings_published=readings,
                              readings_in_lake=n, equal=n == readings, landed_per_s_min=min(mid) if mid else None,
                              landed_per_s_median=sorted(mid)[len(mid) // 2] if mid else None,
                              rss_mib_first=rss[1] if len(rss) > 1 else None, rss_mib_last=rss[-1] if rss else None,
                              rss_mib_max=max(rss) if rss else None), indent=1))
    finally:
        if ing is not None and ing.poll() is None: ing.kill()
        if broker is not None: broker.stop()
        if not a.keep: shutil.rmtree(d, ignore_errors=True)

if __name__ == '__main__': main()
