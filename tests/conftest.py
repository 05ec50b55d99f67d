import json, os, shutil, subprocess, sys
from pathlib import Path
import pytest, yaml
from helpers import free_port, wait_for   # noqa: F401 (shared with the tests and bench/: import them from helpers)

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

def run(cmd, cwd, check=True, env=None, timeout=600):
    "Run `cmd` with the project's venv first on PATH; return the CompletedProcess (output in .stdout)."
    e = os.environ | {'PATH': f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"} | (env or {})
    r = subprocess.run(cmd, cwd=cwd, env=e, capture_output=True, text=True, timeout=timeout, shell=isinstance(cmd, str))
    if check and r.returncode:
        raise AssertionError(f"{cmd} failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}")
    return r

# -- two tiers: `make test-fast` runs what is not marked slow (the edit loop); `make test` runs everything -------------
# End-to-end tests are slow by what they start: a real server or ingester process, a broker, a notebook kernel, a
# browser,
# a DVC pipeline. They are marked here by the fixtures they use (and by `pytest.mark.slow` in the test files).
E2E_FIXTURES = {'server', 'fleet', 'strict', 'served', 'mqtt_broker', 'make_server', 'tiny_project', 'small_champion',
                'lab'}
E2E_FILES = {'test_live.py', 'test_runtime.py', 'test_figures.py', 'test_lab.py', 'test_make_lab.py'}

def pytest_collection_modifyitems(config, items):
    for item in items:
        if E2E_FIXTURES & set(getattr(item, 'fixturenames', ())) or item.path.name in E2E_FILES:
            item.add_marker(pytest.mark.slow)

TINY_TOML = """data_dir = "data"
[simulate]
pumps = 8
days = 20
freq = "5min"
seed = 7
fault_rate = 4.0
"""

@pytest.fixture(scope='session')
def tiny_project(tmp_path_factory):
    "A copy of the project's pipeline files in a fresh git + DVC repo, with a small simulated fleet landed."
    d = tmp_path_factory.mktemp('proj')
    shutil.copy(ROOT/'dvc.yaml', d/'dvc.yaml')
    params = yaml.safe_load((ROOT/'params.yaml').read_text())
    params['train']['max_iter'] = 60   # small and quick
    (d/'params.yaml').write_text(yaml.safe_dump(params))
    shutil.copytree(ROOT/'nbs'/'workflows', d/'nbs'/'workflows')
    shutil.copytree(ROOT/'iot2ml', d/'iot2ml', ignore=shutil.ignore_patterns('__pycache__'))
    (d/'iot2ml.toml').write_text(TINY_TOML)
    (d/'.gitignore').write_text('/build\n/data\n__pycache__/\n')
    run('git init -q && git config user.email t@t && git config user.name t && dvc init -q && dvc config '
        'core.analytics false', d)
    run([str(BIN/'iot2ml'), 'simulate', '--quiet'], d)
    run([str(BIN/'iot2ml'), 'snapshot'], d)
    run('git add -A && git commit -qm init', d)
    return d

# -- `iot2ml serve` as a process, with devices (tests/projects.py) -----------------------------------------------------

@pytest.fixture
def server(tmp_path):
    ("`iot2ml serve` in `tmp_path` with three pumps, a gateway with two pumps behind it and an admin; stopped after "
     "the test.")
    from projects import Server, add_devices
    s = add_devices(Server(tmp_path)).start()
    yield s
    s.stop()

# -- a small trained champion, for the API tests that must get past "no champion model yet" ----------------------------

def bundle_with_spec(src:Path, dest:Path, expected:float) -> Path:
    ("The model bundle at `src`, saved to `dest` with the feature spec its features were built with (if it carries "
     "none).")
    from iot2ml.ml.features import FeatureSpec
    from iot2ml.ml.models import load_model, save_model
    m = load_model(src)
    if getattr(m, 'feature_spec', None) is None: m.feature_spec = FeatureSpec(expected=expected)
    save_model(m, dest)
    for f in Path(src).iterdir():   # any other file of the bundle (detector, card extras)
        if not (dest/f.name).exists(): shutil.copytree(f, dest/f.name) if f.is_dir() else shutil.copy(f, dest/f.name)
    return dest

@pytest.fixture(scope='session')
def small_champion(tmp_path_factory) -> Path:
    "The example workspace's trained bundle with its feature spec: register it in a `ModelRegistry` and promote it."
    from iot2ml.ml.pipeline import example_workspace
    ws = example_workspace('evaluate')
    expected = json.loads((ws['prepared_dir']/'summary.json').read_text())['expected_per_interval']
    return bundle_with_spec(ws['model_dir'], tmp_path_factory.mktemp('champion')/'model', expected)

# -- a real Mosquitto (tests/mqtt_broker.py), for test_devices.py and test_mqtt.py ------------------------------------

@pytest.fixture(scope='session')
def mosquitto():
    "The mosquitto binary, installed by scripts/ensure-mosquitto.sh if missing; fails (never skips) if it cannot be."
    from mqtt_broker import ensure_mosquitto
    try: return ensure_mosquitto()
    except RuntimeError as e: pytest.fail(str(e), pytrace=False)

@pytest.fixture
def mqtt_broker(tmp_path, mosquitto):
    ("Start a real Mosquitto for a password file and an ACL: `mqtt_broker(passwd, acl, extra='') -> Broker` (.host, "
     ".port); stopped after the test.")
    from mqtt_broker import start_broker
    started = []
    def start(passwd, acl, extra=''):
        started.append(start_broker(tmp_path, passwd, acl, extra=extra))
        return started[-1]
    yield start
    for b in started: b.stop()
