"""The model registry on real files and processes: versions and cards, lineage from a real git repository, aliases,
history and rollback, writers in several processes at once with readers watching, the models CLI; drift (PSI, KS) and
the scheduler loop on a simulated clock."""
import json, multiprocessing as mp, subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path
import numpy as np, pandas as pd, pytest
from click.testing import CliRunner
from iot2ml.cli.main import cli
from iot2ml.config import JobSettings, SchedulerSettings, Settings
from iot2ml.ml.registry import ModelRegistry, RegistryError, project_lineage, sha256_file
from iot2ml.ml.retrain import Scheduler, drift_report, gate, psi

def bundle(d:Path, blob:bytes, extra:bool=False) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d/'model.joblib').write_bytes(blob)
    (d/'model.json').write_text(json.dumps(dict(features=['a', 'b'], info=dict(start='2026-01-01 00:00:00+00:00',
                                                                               end='2026-01-09 00:00:00+00:00'))))
    if extra: (d/'detector.bin').write_bytes(b'x' * 10)
    return d

def test_register_copies_bundle_with_card(tmp_path):
    reg = ModelRegistry(tmp_path/'reg')
    v = reg.register(bundle(tmp_path/'b', b'one', extra=True), run_id='r1', metrics={'model': {'pr_auc': 0.5}})
    assert v == 'v1' and reg.versions() == ['v1']
    c = reg.card('v1')
    files = ('detector.bin', 'model.joblib', 'model.json')
    assert {a['file']: a['sha256'] for a in c['artifacts']} == {f: sha256_file(tmp_path/'b'/f) for f in files}
    assert c['training_window'] == {'start': '2026-01-01 00:00:00+00:00', 'end': '2026-01-09 00:00:00+00:00'}
    assert c['features'] == ['a', 'b']
    assert c['run_id'] == 'r1'
    assert c['metrics'] == {'run': {'model': {'pr_auc': 0.5}}, 'holdout': None}
    assert (reg.path('v1')/'detector.bin').read_bytes() == b'x' * 10
    assert reg.find(tmp_path/'b') == 'v1' and reg.find(bundle(tmp_path/'c', b'two')) is None
    # numbers are never reused, even when a version folder is removed by hand
    import shutil
    reg.register(tmp_path/'c')
    shutil.rmtree(reg.path('v2'))
    assert reg.register(tmp_path/'c') == 'v3'
    with pytest.raises(RegistryError, match='is not a model bundle'): reg.register(tmp_path/'empty')

def test_lineage_from_a_real_git_repository(tmp_path):
    d = tmp_path/'p'
    d.mkdir()
    (d/'params.yaml').write_text('train:\n  max_iter: 5\n')
    (d/'data.dvc').write_text('outs:\n- md5: abc123.dir\n  path: data\n')
    sh = lambda c: subprocess.run(c, shell=True, cwd=d, check=True, capture_output=True)
    sh('git init -q && git config user.email t@t && git config user.name t && git add -A && git commit -qm init')
    lin = project_lineage(d)
    head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=d, capture_output=True, text=True).stdout.strip()
    assert lin['git'] == {'commit': head, 'dirty': False, 'changed': []}
    assert lin['data']['md5'] == 'abc123.dir' and lin['params'] == {'train': {'max_iter': 5}}
    (d/'data.dvc').write_text('outs:\n- md5: def456.dir\n  path: data\n')          # a new snapshot is not "dirty"
    lin = project_lineage(d)
    assert lin['git']['dirty'] is False and lin['git']['changed'] == ['data.dvc'] and lin['data']['md5'] == 'def456.dir'
    (d/'params.yaml').write_text('train:\n  max_iter: 6\n')
    assert project_lineage(d)['git']['dirty'] is True

def test_aliases_history_rollback(tmp_path):
    reg = ModelRegistry(tmp_path/'reg')
    for i in range(3): reg.register(bundle(tmp_path/f'b{i}', bytes([i])))
    assert reg.champion() is None and reg.champion_token() == 0
    with pytest.raises(RegistryError, match='no champion to roll back'): reg.rollback()
    reg.promote('v1', reason='first', by='alice')
    reg.promote('v2', by='gate: pr_auc')
    reg.promote('v3', by='gate: pr_auc')
    reg.promote('v1', alias='challenger')
    assert reg.champion() == ('v3', reg.root/'versions'/'v3') and reg.champion_token() == 3
    assert reg.rollback()['to'] == 'v2' and reg.rollback(reason='v2 too')['to'] == 'v1'
    with pytest.raises(RegistryError, match='is the champion already'): reg.rollback(to='v1')
    with pytest.raises(RegistryError, match="no model version 'v9'"): reg.rollback(to='v9')
    with pytest.raises(RegistryError, match="unknown alias 'best'"): reg.promote('v1', alias='best')
    h = reg.history()
    assert [(e['action'], e['alias'], e['from'], e['to']) for e in h] == [
        ('promote', 'champion', None, 'v1'), ('promote', 'champion', 'v1', 'v2'), ('promote', 'champion', 'v2', 'v3'),
        ('promote', 'challenger', None, 'v1'),
        ('rollback', 'champion', 'v3', 'v2'), ('rollback', 'champion', 'v2', 'v1')]
    assert h[0]['by'] == 'alice' and h[-1]['why'] == 'v2 too' and all(e['when'].endswith('+00:00') for e in h)
    assert reg.champion_token() == 5

def _writer(root, k, n):
    reg = ModelRegistry(root)
    for i in range(n):
        d = Path(root).parent/f'b-{k}-{i}'
        bundle(d, f'{k}-{i}'.encode())
        reg.promote(reg.register(d), reason=f'writer {k}', by=f'w{k}')

def _reader(root, stop, bad):
    reg = ModelRegistry(root)
    while not stop.is_set():
        try:
            st = json.loads((Path(root)/'aliases.json').read_text()) if (Path(root)/'aliases.json').exists() else None
            if st and st['aliases'].get('champion'): reg.card(st['aliases']['champion'])
            reg.history()
        except Exception as e:
            bad.put(repr(e))
            return

def test_concurrent_writers_and_readers(tmp_path):
    root = tmp_path/'reg'
    ctx = mp.get_context('fork')
    stop, bad = ctx.Event(), ctx.Queue()
    readers = [ctx.Process(target=_reader, args=(root, stop, bad)) for _ in range(2)]
    writers = [ctx.Process(target=_writer, args=(root, k, 6)) for k in range(3)]
    for p in readers + writers: p.start()
    for p in writers:
        p.join(120)
        assert p.exitcode == 0
    stop.set()
    for p in readers: p.join(30)
    assert bad.empty(), bad.get()
    reg = ModelRegistry(root)
    assert reg.versions() == [f'v{i}' for i in range(1, 19)]                # every version, none lost or doubled
    h = reg.history()
    assert len(h) == 18 and reg.champion_token() == 18 and reg.champion()[0] == h[-1]['to']
    assert [e['from'] for e in h[1:]] == [e['to'] for e in h[:-1]]           # each promotion saw the one before it
    assert not list(root.glob('**/.*.tmp')) and not [p for p in (root/'versions').iterdir() if p.name.startswith('.')]

def test_models_cli(tmp_path, monkeypatch):
    (tmp_path/'iot2ml.toml').write_text('[simulate]\npumps = 2\n')
    monkeypatch.chdir(tmp_path)
    reg = ModelRegistry(tmp_path/'state'/'registry')
    for i in range(2):
        reg.register(bundle(tmp_path/f'b{i}', bytes([i])), f'run-{i}',
                     dict(git=dict(commit='0123456789abcdef', dirty=False), data=dict(md5='feedbeef00112233.dir')),
                     {'model': {'pr_auc': 0.6 + i / 10}})
    inv = lambda *a: CliRunner().invoke(cli, list(a))
    r = inv('models', 'list')
    assert r.exit_code == 0
    assert r.output.splitlines()[0].split() == ['version', 'created', 'aliases', 'metric', 'test', 'holdout', 'data',
                                                'commit']
    assert r.output.splitlines()[2].split()[2:] == ['-', 'pr_auc', '0.700', '-', 'feedbeef00', '01234567']
    assert inv('models', 'promote', 'v2').exit_code == 2                       # --reason is required
    assert inv('models', 'promote', 'v2', '--reason', 'good', '--by',
               'carol').output == "v2 is now champion (was none).\n"
    assert json.loads(inv('models', 'show', 'v2', '--json').output) == reg.card('v2')
    assert 'aliases: champion' in inv('models', 'show', 'v2').output
    r = inv('models', 'show', 'v5')
    assert r.exit_code == 1 and 'known versions: v1, v2' in r.output
    assert inv('models', 'rollback', '--to', 'v1').output == "Rolled back: v1 is champion again (was v2).\n"
    lines = [json.loads(l) for l in inv('models', 'history', '--format', 'jsonl').output.splitlines()]
    assert json.loads(inv('models', 'history', '--json').output) == lines        # --json: one array, as everywhere
    assert [(e['to'], e['by']) for e in lines][0] == ('v2', 'carol') and lines[1]['action'] == 'rollback'

def test_psi_and_ks_flag_a_shifted_feature_only():
    rng = np.random.default_rng(3)
    train = pd.DataFrame({'same': rng.normal(size=4000), 'shifted': rng.gamma(2, size=4000), 'label': 0})
    live = pd.DataFrame({'same': rng.normal(size=1500), 'shifted': rng.gamma(2, size=1500) + 1.0, 'label': 1})
    rep = drift_report(train, live, SchedulerSettings(drift_share=0.5))
    assert rep.table.loc['shifted', 'psi'] > 0.25 and rep.table.loc['shifted', 'p_value'] < 1e-6
    assert rep.table.loc['same', 'psi'] < 0.05 and rep.table.loc['same', 'p_value'] > 0.001
    assert list(rep.table.index) == ['same', 'shifted'] and list(rep.table['drifted']) == [False, True] and rep.drifted
    assert not drift_report(train, live, SchedulerSettings(drift_share=0.6)).drifted
    assert psi([1, 2, 3], []) != psi([1, 2, 3], []) and psi(np.ones(10), np.ones(10)) == 0   # NaN without data

def test_gate_criteria():
    good = dict(pr_auc=0.8, failures=3, false_alarms_per_device_month=2.0)
    g = gate(good | dict(false_alarms_per_device_month=9.0), dict(pr_auc=0.5))
    assert not g.promote and 'false alarms per device-month is 9.0, needs <= 6' in g.reason
    assert not gate(good | dict(pr_auc=float('nan')), dict(pr_auc=0.5)).promote
    assert gate(good, dict(pr_auc=0.8)).promote and not gate(good, dict(pr_auc=0.81)).promote

def test_scheduler_keeps_going_after_a_failing_job(tmp_path):
    clock = [datetime(2026, 3, 1, 23, 58, tzinfo=timezone.utc)]
    log = []
    from threading import Event
    stop = Event()
    def rec(r):
        log.append(r)
        if sum(x['event'] == 'job_end' for x in log) == 3: stop.set()
    jobs = [JobSettings(name='bad', cron='0 0 * * *', job='snapshot'),
            JobSettings(name='proc', cron='1 0 * * *', job='process')]
    (tmp_path/'data'/'lake').mkdir(parents=True)
    s = Scheduler(Settings(root=tmp_path), jobs, log=rec, clock=lambda: clock[0])
    n = s.run(stop, lambda sec: clock.__setitem__(0, clock[0] + timedelta(seconds=sec)))
    ends = [(x['job'], x['status']) for x in log if x['event'] == 'job_end']
    assert n == 3 and ends == [('bad', 'failed'), ('proc', 'ok'), ('bad', 'failed')]
    assert log[0]['event'] == 'scheduler_start' and log[-1] == {'event': 'scheduler_stop', 'jobs_run': 3}

def test_scheduler_cli_list_and_once_with_configured_jobs(tmp_path):
    (tmp_path/'iot2ml.toml').write_text('[[scheduler.jobs]]\nname = "nightly-process"\ncron = "5 0 * * *"\njob = '
                                        '"process"\n'
                                        '[[scheduler.jobs]]\nname = "weekly"\ncron = "0 3 * * 0"\njob = '
                                        '"retrain"\nargs = {dry_run = true}\n')
    (tmp_path/'data'/'lake').mkdir(parents=True)
    iot2ml = str(Path(__import__('sys').executable).parent/'iot2ml')
    r = subprocess.run([iot2ml, 'scheduler', '--list'], cwd=tmp_path, capture_output=True, text=True)
    rows = [l.split()[:3] for l in r.stdout.splitlines()[1:]]
    assert r.returncode == 0 and sorted(rows) == [['nightly-process', 'process', '5'], ['weekly', 'retrain', '0']]
    r = subprocess.run([iot2ml, 'scheduler', '--once', 'nightly-process'], cwd=tmp_path, capture_output=True, text=True)
    rec = json.loads(r.stdout.splitlines()[-1])
    assert r.returncode == 0 and (rec['job'], rec['kind'], rec['status']) == ('nightly-process', 'process', 'ok')
    # no params.yaml
    r = subprocess.run([iot2ml, 'scheduler', '--once', 'weekly'], cwd=tmp_path, capture_output=True, text=True)
    rec = json.loads(r.stdout.splitlines()[-1])
    assert r.returncode == 1 and rec['status'] == 'failed' and 'params.yaml does not exist' in rec['detail']

def test_drift_refuses_a_live_table_without_the_features():
    ("A live table that lacks the model's columns is an error naming them, not '100% drifted' (which would trigger a "
     "retrain).")
    from iot2ml.ml.registry import RegistryError
    rng = np.random.default_rng(1)
    train = pd.DataFrame({'a': rng.normal(size=500), 'b': rng.normal(size=500)})
    with pytest.raises(RegistryError, match='lacks 2 of the 2 feature columns'):
        drift_report(train, pd.DataFrame({'foo': [1.0]}), SchedulerSettings(), features=['a', 'b'])
    rep = drift_report(train, pd.DataFrame({'a': rng.normal(size=300)}), SchedulerSettings(drift_share=0.5),
                       features=['a', 'b'])
    # 'b' has no live values: left out, not counted as drift
    assert list(rep.table.index) == ['a'] and not rep.drifted
