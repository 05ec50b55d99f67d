"""Model bundles pickled by iot2ml 0.1's flat layout (`iot2ml.models`, `iot2ml.detect`, `iot2ml.features`) load after
the move into subpackages (iot2ml/_compat.py). `tests/data/registry-flat-layout` is a model registry written by that
code on 2026-12-03 (v1 then v2 promoted), before the move."""
import pickletools, shutil, subprocess, sys
from pathlib import Path
import numpy as np, pandas as pd

FIXTURE = Path(__file__).parent/'data'/'registry-flat-layout'

def test_the_fixture_names_the_old_modules():
    "(So the test below tests something: the bundle really pickles the flat module paths.)"
    data = (FIXTURE/'versions'/'v2'/'model.joblib').read_bytes()
    assert b'iot2ml.models' in data and b'iot2ml.detect' in data and b'iot2ml.ml.' not in data

def test_a_bundle_pickled_before_the_move_serves_and_can_be_rolled_back_to(tmp_path):
    from iot2ml.ml.registry import ModelRegistry
    from iot2ml.serve.scoring import ANOMALY, Champion
    reg = ModelRegistry(shutil.copytree(FIXTURE, tmp_path/'models'))
    ch = Champion(reg, start=False)
    got = ch.get()   # loaded, and tried on a row
    assert got.version == 'v2' and type(got.model).__module__ == 'iot2ml.ml.models'
    X = pd.DataFrame(np.zeros((3, len(got.features))), columns=list(got.features)).assign(**{ANOMALY: 0.0})
    risk = got.score(X)['risk']
    assert len(risk) == 3 and risk.between(0, 1).all()
    reg.rollback(reason='back to the first bundle', by='test')
    assert ch.check() and ch.get().version == 'v1'

def test_the_old_names_are_the_new_modules_in_a_fresh_process():
    code = ("import iot2ml.models as a, iot2ml.ml.models as b, iot2ml.api as c, iot2ml.serve.http as d; "
            "assert a is b and c is d; from iot2ml.mlregistry import ModelRegistry; print('ok')")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert out.stdout.strip() == 'ok', out.stderr
