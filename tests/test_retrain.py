"""The gated retraining loop on a real git + DVC project: `iot2ml retrain` (snapshot, dvc repro via papermill, register,
gate, promote), refusal of a worse model, forced promotion and rollback, a failing notebook, lineage that reproduces,
the scheduler's --once and drift on the real feature table."""
import json, shutil
import pandas as pd, pytest, yaml
from conftest import run, BIN

pytestmark = pytest.mark.slow
IOT2ML = str(BIN/'iot2ml')

def reg_dir(d): return d/'state'/'registry'
def card(d, v): return json.loads((reg_dir(d)/'versions'/v/'card.json').read_text())
def aliases(d): return json.loads((reg_dir(d)/'aliases.json').read_text())
def runs(d): return [json.loads(p.read_text()) for p in sorted((reg_dir(d)/'runs').glob('*/run.json'))]
def set_params(d, **train):
    p = yaml.safe_load((d/'params.yaml').read_text())
    p['train'].update(train)
    (d/'params.yaml').write_text(yaml.safe_dump(p))

@pytest.fixture(scope='module')
def first(tiny_project, tmp_path_factory):
    "A copy of the tiny project whose first `iot2ml retrain` made v1 the champion (the copy is not changed afterwards)."
    d = tmp_path_factory.mktemp('retrain')/'proj'
    shutil.copytree(tiny_project, d, symlinks=True, ignore=shutil.ignore_patterns('build', 'state'))
    set_params(d, cv_folds=2, max_iter=40)               # quick
    run('git add -A && git commit -qm "quick params"', d)
    r = run([IOT2ML, 'retrain'], d)
    return d, r.stdout

@pytest.fixture
def proj(first, tmp_path):
    "A private copy of the project after the first retrain, for a test that changes it."
    d = tmp_path/'proj'
    shutil.copytree(first[0], d, symlinks=True)
    return d

def test_first_retrain_promotes_with_lineage(first):
    d, out = first
    # each stage ran, or came back from DVC's run cache when another test already ran the same inputs
    assert "stage prepare" in out and "stage train" in out and "registered v1" in out and 'promoted' in out
    assert aliases(d)['aliases'] == {'champion': 'v1'}
    c = card(d, 'v1')
    head = run('git rev-parse HEAD', d).stdout.strip()
    assert c['git']['commit'] == head and c['git']['dirty'] is False
    assert c['data']['md5'] == yaml.safe_load((d/'data.dvc').read_text())['outs'][0]['md5']
    assert c['data']['md5'].endswith('.dir')
    assert c['params'] == yaml.safe_load((d/'params.yaml').read_text())
    assert c['features'] == json.loads((d/'build/model/model.json').read_text())['features'] and len(c['features']) > 10
    assert c['training_window']['start'] and c['training_window']['end']
    assert c['metrics']['run'] == json.loads((d/'build/metrics/metrics.json').read_text())
    assert c['metrics']['holdout']['metrics']['failures'] >= 2
    assert c['metrics']['holdout']['champion']['version'] is None
    files = {a['file'] for a in c['artifacts']}
    assert {'model.joblib', 'model.json'} <= files
    r = runs(d)[-1]
    assert r['status'] == 'promoted' and r['versions'] == {'champion_before': None, 'challenger': 'v1',
                                                           'champion_after': 'v1'}
    assert [row['passed'] for row in r['gate']['rows']] == [True, True, None]       # no champion: absolute criteria
    h = [json.loads(l) for l in (reg_dir(d)/'history.jsonl').read_text().splitlines()]
    assert h[-1]['to'] == 'v1' and h[-1]['by'] == 'gate: pr_auc' and h[-1]['run_id'] == r['run_id']
    lst = run([IOT2ML, 'models', 'list'], d).stdout.splitlines()
    assert lst[1].split()[:3] == ['v1', c['created'], 'champion'] and c['git']['commit'][:8] in lst[1]

@pytest.fixture(scope='module')
def second(first, tmp_path_factory):
    "A copy of the first project retrained on another fleet (seed 8) with params that make a bad model: refused."
    d = tmp_path_factory.mktemp('second')/'proj'
    shutil.copytree(first[0], d, symlinks=True)
    run([IOT2ML, 'simulate', '--replace', '--seed', '8', '--quiet'], d)
    set_params(d, max_iter=1, learning_rate=0.001)        # a model that has learned nothing
    return d, run([IOT2ML, 'retrain'], d).stdout

def test_gate_refuses_worse_model(second):
    d, out = second
    # new data and params: rerun
    assert 'refused' in out and 'stage prepare ...' in out and 'stage train ...' in out
    assert aliases(d)['aliases'] == {'champion': 'v1', 'challenger': 'v2'}
    r = runs(d)[-1]
    assert r['status'] == 'refused' and r['versions'] == {'champion_before': 'v1', 'challenger': 'v2',
                                                          'champion_after': 'v1'}
    cmp = r['gate']['rows'][-1]
    assert cmp['criterion'].startswith('challenger pr_auc >= champion') and cmp['passed'] is False
    ho = card(d, 'v2')['metrics']['holdout']
    assert ho['champion']['version'] == 'v1' and ho['metrics']['pr_auc'] < ho['champion']['metrics']['pr_auc']
    assert ho['period'] == r['holdout']                                     # both scored on the same rows
    assert card(d, 'v2')['git']['dirty'] is True
    assert set(card(d, 'v2')['git']['changed']) - {'dvc.lock'} == {'data.dvc', 'params.yaml'}
    assert card(d, 'v2')['data']['md5'] != card(d, 'v1')['data']['md5']

def test_force_then_rollback(second, tmp_path):
    d = tmp_path/'proj'
    shutil.copytree(second[0], d, symlinks=True)
    # a person overrides the gate: nothing to rebuild, the bundle is v2 already
    out = run([IOT2ML, 'retrain', '--no-snapshot', '--force', '--reason', 'testing the override'], d).stdout
    assert 'is v2 already' in out and aliases(d)['aliases']['champion'] == 'v2'
    h = json.loads((reg_dir(d)/'history.jsonl').read_text().splitlines()[-1])
    assert (h['from'], h['to'], h['why']) == ('v1', 'v2', 'testing the override') and not h['by'].startswith('gate')
    # rollback restores the earlier champion, and says so in the history
    token = aliases(d)['champion_serial']
    assert 'v1 is champion again' in run([IOT2ML, 'models', 'rollback'], d).stdout
    assert aliases(d)['aliases']['champion'] == 'v1' and aliases(d)['champion_serial'] == token + 1
    hist = run([IOT2ML, 'models', 'history'], d).stdout.splitlines()
    assert hist[-1].split()[1:5] == ['rollback', 'champion', 'v2', 'v1']
    r = run([IOT2ML, 'models', 'rollback'], d, check=False)
    assert r.returncode == 1 and 'only champion there has been' in r.stderr

def test_failed_retrain_names_notebook_and_cell(proj):
    d = proj
    nb = json.loads((d/'nbs/workflows/train.ipynb').read_text())
    i = next(k for k, c in enumerate(nb['cells']) if 'pipeline.train(' in ''.join(c['source']))
    nb['cells'][i]['source'] = ["raise RuntimeError('boom')\n"] + list(nb['cells'][i]['source'])
    (d/'nbs/workflows/train.ipynb').write_text(json.dumps(nb))
    before = aliases(d)
    r = run([IOT2ML, 'retrain', '--no-snapshot'], d, check=False)
    assert r.returncode == 1
    msg = r.stderr
    assert 'nbs/workflows/train.ipynb' in msg
    assert f'cell {i} ' in msg
    assert "raise RuntimeError('boom')" in msg
    assert 'RuntimeError: boom' in msg
    assert aliases(d) == before                                           # champion untouched
    rec = runs(d)[-1]
    assert rec['status'] == 'failed' and rec['failure']['stage'] == 'train' and rec['failure']['cell'] == i
    kept = json.loads(open(rec['failure']['executed']).read())             # the failing executed notebook, kept
    assert any(o.get('ename') == 'RuntimeError' for c in kept['cells'] for o in c.get('outputs', []))
    assert (reg_dir(d)/'runs'/rec['run_id']/'dvc.log').exists()

def test_lineage_reproduces(second):
    "Two retrains on different data; the first version's commit and data hash rebuild its recorded metrics."
    d = second[0]
    v1 = card(d, 'v1')
    run(['git', 'checkout', '-qf', v1['git']['commit']], d)
    (d/'data.dvc').write_text(yaml.safe_dump(v1['data']['dvc']))           # data.dvc as recorded: md5 of the data
    run('dvc checkout --force data.dvc', d)
    shutil.rmtree(d/'build')
    run('dvc repro --force --no-run-cache evaluate', d)
    got = json.loads((d/'build/metrics/metrics.json').read_text())
    for k in ('pr_auc', 'precision', 'recall', 'failures', 'caught', 'false_alarms'):
        assert got['model'][k] == pytest.approx(v1['metrics']['run']['model'][k], rel=1e-9), k
    assert got['test_period'] == v1['metrics']['run']['test_period']

def test_scheduler_once_and_drift(first, tmp_path):
    d = first[0]
    r = run([IOT2ML, 'scheduler', '--once', 'snapshot'], d)
    rec = json.loads(r.stdout.strip().splitlines()[-1])
    assert (rec['event'], rec['job'], rec['status']) == ('job_end', 'snapshot', 'ok')
    assert yaml.safe_load((d/'data.dvc').read_text())['outs'][0]['md5'] in rec['detail']
    r = run([IOT2ML, 'scheduler', '--once', 'nightly'], d, check=False)
    assert r.returncode != 0 and "no scheduler job 'nightly'" in r.stderr
    # drift: the champion's training rows as "live", one feature shifted by three standard deviations
    c = card(d, 'v1')
    f = pd.read_parquet(d/'build/features/features.parquet')
    ts = f.index.get_level_values('ts')
    window = c['training_window']
    live = f[(ts >= pd.Timestamp(window['start'])) & (ts <= pd.Timestamp(window['end']))].copy()
    col = 'flow_mean__rel' if 'flow_mean__rel' in c['features'] else c['features'][10]
    live[col] = live[col] + 3 * live[col].std()
    live.to_parquet(tmp_path/'live.parquet')
    r = json.loads(run([IOT2ML, 'drift', '--live', str(tmp_path/'live.parquet'), '--json'], d).stdout)
    flagged = {x['feature']: x['drifted'] for x in r['features']}
    assert flagged[col] is True and sum(flagged.values()) == 1 and r['drifted'] is False
