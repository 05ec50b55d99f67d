"""DVC compares with main on a fresh clone: after the demo, `dvc metrics diff`, `dvc plots diff` and `dvc exp show` find
HEAD's outputs (in the DVC cache: build/ is not in git), and git stays clean after the demo and after `iot2ml retrain`.

The committed dvc.lock must name what the current code produces, or a fresh clone's `make demo` rewrites it (a dirty
tree, and main's outputs missing from the cache): `test_dvc_lock_matches_the_code` checks that cheaply."""
import hashlib, json, re, subprocess
from pathlib import Path
import pytest, yaml
from conftest import run, BIN

ROOT = Path(__file__).resolve().parents[1]
# a small fleet whose holdout still holds failures (the demo's CLI takes pumps and days; the rest from the environment)
SMALL = {'IOT2ML_SIMULATE__FREQ': '5min', 'IOT2ML_SIMULATE__SEED': '7', 'IOT2ML_SIMULATE__FAULT_RATE': '4.0',
         'PYTHONHASHSEED': '0'}
DEMO = [str(BIN/'iot2ml'), 'demo', '--pumps', '6', '--days', '16', '--live-hours', '0']

def _md5(p:Path) -> str: return hashlib.md5(p.read_bytes()).hexdigest()

def _get(d:dict, dotted:str):
    for k in dotted.split('.'): d = d[k]
    return d

def test_dvc_lock_matches_the_code():
    ("Every stage's code deps, params and command in dvc.lock are those of the tree: `make demo` on a fresh clone "
     "reruns nothing.")
    lock = yaml.safe_load((ROOT/'dvc.lock').read_text())['stages']
    stages = yaml.safe_load((ROOT/'dvc.yaml').read_text())['stages']
    params = yaml.safe_load((ROOT/'params.yaml').read_text())
    tracked = set(subprocess.run(['git', 'ls-files'], cwd=ROOT, capture_output=True, text=True,
                                 check=True).stdout.split())
    stale = []
    assert set(lock) == set(stages), f"dvc.lock has stages {sorted(lock)}, dvc.yaml {sorted(stages)}"
    for name, st in lock.items():
        if ' '.join(st['cmd'].split()) != ' '.join(stages[name]['cmd'].split()): stale.append(f"{name}: cmd")
        for d in st.get('deps', []):
            if d['path'] in tracked and _md5(ROOT/d['path']) != d['md5']: stale.append(f"{name}: {d['path']}")
        for key, value in st.get('params', {}).get('params.yaml', {}).items():
            if _get(params, key) != value: stale.append(f"{name}: params {key}")
    assert not stale, ("dvc.lock does not match the code (" + ', '.join(stale) + "): run `make demo` and commit "
                       "dvc.lock, or a fresh clone's demo rewrites it")

def test_metrics_and_plots_are_cached_by_dvc():
    ("No output of dvc.yaml is `cache: false`: build/ is git-ignored, so the DVC cache is the only place HEAD's copy "
     "can be.")
    uncached = []
    for name, st in yaml.safe_load((ROOT/'dvc.yaml').read_text())['stages'].items():
        for kind in ('outs', 'metrics', 'plots'):
            for o in st.get(kind, []):
                if isinstance(o, dict) and any(isinstance(v, dict) and v.get('cache') is False for v in o.values()):
                    uncached += list(o)
    assert not uncached, f"outputs with cache: false: {uncached}"

def _porcelain(d:Path) -> str: return run('git status --porcelain', d).stdout

@pytest.fixture(scope='module')
def clone(tmp_path_factory) -> Path:
    "A fresh clone, after its demo, of a main committed for a small fleet (its own demo's data.dvc and dvc.lock)."
    tmp = tmp_path_factory.mktemp('compare')
    main, clone = tmp/'main', tmp/'clone'
    run(['git', 'clone', '-q', str(ROOT), str(main)], tmp)
    # main for the small fleet: its own demo's data.dvc and dvc.lock committed (the repo's are for 50 pumps x 30 days)
    p = yaml.safe_load((main/'params.yaml').read_text())
    p['train']['max_iter'] = 40   # small and quick
    (main/'params.yaml').write_text(yaml.safe_dump(p, sort_keys=False))
    run(DEMO, main, env=SMALL, timeout=900)
    run(f'{GIT_USER} && git add params.yaml data.dvc dvc.lock && git commit -qm "main for a small fleet"', main)
    run(['git', 'clone', '-q', str(main), str(clone)], tmp)
    run(GIT_USER, clone)
    run(DEMO, clone, env=SMALL, timeout=900)
    return clone

GIT_USER = 'git config user.email t@t && git config user.name t'

# The four steps below run in this order on one clone (two small demos, a retrain and an experiment: 6-10 min on
# 2 cores, most of it in the fixture); each fails on its own step.

@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_demo_on_a_fresh_clone_writes_nothing_git_sees(clone):
    "The demo rebuilds byte for byte what dvc.lock names."
    diff = run('git diff', clone).stdout[-3000:]
    assert _porcelain(clone) == '', f"git is not clean after the demo:\n{_porcelain(clone)}\n{diff}"

@pytest.mark.slow
@pytest.mark.timeout(900)
def test_metrics_and_plots_diff_find_heads_outputs(clone):
    r = run('dvc metrics diff HEAD --json', clone)
    assert 'failed to load' not in r.stdout + r.stderr, r.stdout + r.stderr
    plots = json.loads(run('dvc plots diff HEAD --json', clone).stdout)   # writes dvc_plots/, which git ignores
    assert not plots.get('errors'), plots.get('errors')
    pr = plots['data']['build/plots/pr_curve.csv'][0]
    assert 'HEAD' in pr['revisions']
    assert any(v['rev'] == 'HEAD' for v in pr['content']['data']['values'])
    assert [x['revisions'] for x in plots['data']['build/plots/pr_curve.png']] == [['workspace'], ['HEAD']]

@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_retrain_keeps_git_clean_and_its_cards_say_not_dirty(clone):
    "Retrain (snapshot, repro, register, gate): still clean, and the new card does not say dirty."
    run([str(BIN/'iot2ml'), 'retrain'], clone, env=SMALL, timeout=900)
    assert _porcelain(clone) == '', f"git is not clean after iot2ml retrain:\n{_porcelain(clone)}"
    versions = json.loads(run([str(BIN/'iot2ml'), 'models', 'list', '--json'], clone).stdout)
    for v in versions:
        card = json.loads(run([str(BIN/'iot2ml'), 'models', 'show', v['version'], '--json'], clone).stdout)
        assert card['git']['dirty'] is False and card['git']['changed'] == [], card['git']

def _model_metrics(entry) -> dict:
    "The model metrics of one `dvc exp show --json` entry."
    assert not entry.get('error'), entry['error']
    return entry['data']['metrics']['build/metrics/metrics.json']['data']['model']

@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_an_experiment_reruns_train_only_and_compares_with_main(clone):
    "An experiment, compared with main: main's metrics are there and numeric, beside the experiment's."
    out = run('dvc exp run -S train.learning_rate=0.1', clone, env=SMALL, timeout=900).stdout
    # a train param reruns train and what follows, nothing before it
    stages = re.findall(r"Running stage '(\w+)'", out)
    assert 'train' in stages and 'prepare' not in stages and 'features' not in stages, out[-2000:]
    assert json.loads((clone/'build/model/model.json').read_text())['params']['learning_rate'] == 0.1
    show = json.loads(run('dvc exp show --json', clone).stdout)
    head = next(e for e in show if e['rev'] != 'workspace')
    exps = [x for e in (head.get('experiments') or []) for x in e['revs']]
    assert exps, show
    base, exp = _model_metrics(head), _model_metrics(exps[0])
    for m in (base, exp):
        assert all(isinstance(m[k], (int, float)) for k in ('pr_auc', 'precision', 'recall', 'f1')), m
    assert exps[0]['data']['params']['params.yaml']['data']['train']['learning_rate'] == 0.1
    assert head['data']['params']['params.yaml']['data']['train']['learning_rate'] != 0.1
