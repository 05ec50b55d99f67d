"The DVC pipeline end to end on a small fleet: dvc repro, no-op reruns, params that rerun only their stages."
import json, re
import pandas as pd, pytest, yaml
from conftest import run, BIN

pytestmark = pytest.mark.slow

def ran(out:str) -> list[str]: return re.findall(r"Running stage '(\w+)'", out)

def test_repro_end_to_end(tiny_project):
    d = tiny_project
    out = run('dvc repro', d).stdout
    assert ran(out) == ['prepare', 'features', 'train', 'evaluate', 'report']
    metrics = d/'build/metrics/metrics.json'
    m = json.loads(metrics.read_text())
    for r in (m['model'], m['baseline']):
        assert all(0 <= r[k] <= 1 for k in ('precision', 'recall', 'f1', 'pr_auc')), r
        assert 0 <= r['caught'] <= r['failures'], r
        assert r['failures'] >= 1, r
        assert 0 < r['positives'] < r['rows'] == m['test_period']['rows'], r
        assert 'mean_lead_hours' in r
    model, base = m['model'], m['baseline']
    # better than a trivial score: a constant's PR AUC is the positive rate (on this tiny fleet the threshold baseline
    # may win)
    assert model['pr_auc'] > 2 * model['positives'] / model['rows'] and model['caught'] >= 1, model
    html = (d/'build/report/report.html').read_text()
    assert html.count('src="data:image/png;base64,') == 5 and 'http://' not in html and 'https://' not in html
    for f in ('pr_curve.csv', 'confusion.csv', 'risk_timeline.csv', 'pr_curve.png'):
        assert (d/'build/plots'/f).stat().st_size > 0
    for s in ('prepare', 'features', 'train', 'evaluate', 'report'):          # executed notebooks kept
        nb = json.loads((d/f'build/notebooks/{s}.ipynb').read_text())
        assert any('injected-parameters' in c['metadata'].get('tags', []) for c in nb['cells'])
    # papermill's parameters took effect: the stage wrote where dvc.yaml told it to
    assert (d/'build/prepared/intervals.parquet').exists() and (d/'build/model/model.joblib').exists()
    # the plots DVC can show
    assert 'pr_curve' in run('dvc plots show --json', d).stdout

    # nothing changed: nothing reruns
    assert ran(run('dvc repro', d).stdout) == []
    # (the same data and params give the same numbers, and a train param reruns train and what follows: both in
    # test_dvc_compare.py, where a fresh clone's demo rebuilds exactly main's dvc.lock and `dvc exp run -S` reruns)
    # a param of the last stage reruns only it
    p = yaml.safe_load((d/'params.yaml').read_text())
    p['report']['title'] = 'Another title'
    (d/'params.yaml').write_text(yaml.safe_dump(p))
    assert ran(run('dvc repro', d).stdout) == ['report']
    assert 'Another title' in (d/'build/report/report.html').read_text()

# `dvc exp run -S` (only the stages after the param rerun; exp show lists main beside it): test_dvc_compare.py

def test_bad_param_fails_with_a_clear_message(tiny_project, tmp_path):
    d = tiny_project
    bad = tmp_path/'params.yaml'
    bad.write_text('train:\n  learnig_rate: 0.1\n')
    r = run([str(BIN/'papermill'), 'nbs/workflows/train.ipynb', str(tmp_path/'out.ipynb'), '-p', 'features_dir',
             'build/features',
             '-p', 'out_dir', str(tmp_path/'m'), '-p', 'params_file', str(bad)], d, check=False)
    assert r.returncode != 0
    assert "unknown key 'train.learnig_rate'" in r.stdout + r.stderr
    assert "did you mean 'train.learning_rate'" in r.stdout + r.stderr
