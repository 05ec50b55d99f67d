"""A real Mosquitto broker for tests: a generated config on a free port of 127.0.0.1, started and stopped by its pid.

    broker = start_broker(tmp_path, passwd_file, acl_file)   # accepts connections when it returns
    ... broker.host, broker.port; broker.reload() after rewriting the files ...
    broker.stop()
"""
from __future__ import annotations
import os, pwd, shutil, signal, socket, subprocess, time
from dataclasses import dataclass
from pathlib import Path
from helpers import free_port

ROOT = Path(__file__).resolve().parents[1]

def mosquitto_bin() -> str|None:
    "The mosquitto binary, or None (Debian puts it in /usr/sbin, often not on a user's PATH)."
    return shutil.which('mosquitto') or next((p for p in ('/usr/sbin/mosquitto',
                                                          '/usr/local/sbin/mosquitto') if os.access(p, os.X_OK)), None)

def ensure_mosquitto() -> str:
    ("The mosquitto binary, installed by scripts/ensure-mosquitto.sh if missing; RuntimeError saying what to do if it "
     "cannot be.")
    if (b := mosquitto_bin()): return b
    r = subprocess.run(['bash', str(ROOT/'scripts'/'ensure-mosquitto.sh')], capture_output=True, text=True, timeout=600)
    if r.returncode or not (b := mosquitto_bin()):
        raise RuntimeError(f"these tests need a real Mosquitto broker and scripts/ensure-mosquitto.sh could not "
                           f"install it:\n{r.stderr.strip()}")
    return b

@dataclass
class Broker:
    "A running mosquitto: where it listens, its files, and how to reload and stop it."
    proc: subprocess.Popen
    host: str
    port: int
    conf: Path
    log: Path

    def reload(self) -> None:
        "Make the broker re-read its password file and ACL (SIGHUP), as after `iot2ml broker-config`."
        self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        "Stop this broker only: terminate, then kill if it has not exited after 5 s."
        if self.proc.poll() is None:
            self.proc.terminate()
            try: self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def log_text(self) -> str: return self.log.read_text(errors='replace') if self.log.exists() else ''

CONF = """# written by tests/mqtt_broker.py
listener {port} {host}
allow_anonymous false
password_file {passwd}
acl_file {acl}
persistence true
persistence_location {data}/
# keep every message for a client that is down or behind (with the default, 1000, the broker drops the rest)
max_queued_messages 0
log_dest stdout
log_type error
log_type warning
log_type notice
log_type information
user {user}
"""

def _listening(host:str, port:int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2): return True
    except OSError: return False

def start_broker(tmp_path:Path|str, # a folder for the config, log and persistence
                 passwd_file:Path|str, # Mosquitto password file (e.g. from `iot2ml broker-config`)
                 acl_file:Path|str, # Mosquitto ACL file
                 host:str='127.0.0.1', timeout:float=10.0,
                 extra:str='') -> Broker: # more mosquitto.conf lines, e.g. 'max_inflight_messages 1000'
    "Start mosquitto on a free port of `host` with anonymous access off, and return once it accepts connections."
    exe, d = ensure_mosquitto(), Path(tmp_path)/'mosquitto-broker'
    (d/'data').mkdir(parents=True, exist_ok=True)
    for attempt in range(3):  # another process may take the free port before mosquitto binds it
        port, conf, log = free_port(host), d/'mosquitto.conf', d/f'mosquitto-{attempt}.log'
        conf.write_text(CONF.format(port=port, host=host, passwd=Path(passwd_file).resolve(),
                                    acl=Path(acl_file).resolve(),
                                    data=(d/'data').resolve(), user=pwd.getpwuid(os.getuid()).pw_name) + extra + '\n')
        with open(log, 'wb') as out:
            proc = subprocess.Popen([exe, '-c', str(conf)], stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        b, deadline = Broker(proc, host, port, conf, log), time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if _listening(host, port): return b
            time.sleep(0.02)
        b.stop()
        if 'Address already in use' not in b.log_text(): break
    raise RuntimeError(f"mosquitto did not start on {host}:{port} (exit status {proc.returncode}); its "
                       f"log:\n{b.log_text()}")
