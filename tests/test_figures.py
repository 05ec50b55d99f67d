"""Library figures display as images in a real kernel, with and without `%matplotlib inline` (issue 9, item 1).

Each plotting function of the library runs in its own cell of a notebook executed by nbclient on a tiny simulated
lake; every such cell must show exactly one `image/png`, and no output may be a bare `<Figure ...>` text."""
import json
import nbformat, pytest
from nbclient import NotebookClient
from iot2ml.ml.kernel import EncryptedKernelManager

SETUP = """
import numpy as np, pandas as pd
from pathlib import Path
from iot2ml.sim.fleet import FleetSpec
from iot2ml.lake.store import Lake
from iot2ml.ml.pipeline import simulate_to_lake, prepare, features
from iot2ml.config import PrepareParams, FeaturesParams
from iot2ml.lake import explore as ex
from iot2ml.ml import evaluate as ev, models as mo
lake = Lake(Path('lake'), Path('reference'), fsync=False)
simulate_to_lake(FleetSpec(pumps=2, days=4, freq='30min', seed=1, fault_rate=12), lake)
prepare(lake, 'prepared', PrepareParams())
t = features('prepared', 'features', FeaturesParams(windows=[3], normal_window=24, lags=[1]))
log = pd.read_parquet('prepared/maintenance.parquet')
rng = np.random.default_rng(0)
y = (rng.random(len(t)) < 0.2).astype(int); score = np.clip(0.4 * y + rng.random(len(t)) * 0.6, 0, 1)
pred = pd.DataFrame({'risk': score, 'alert': (score > 0.5).astype(int)}, index=t.index)
sig = pd.Series(np.sin(np.arange(200) / 9), index=pd.date_range('2026-01-01', periods=200, freq='h', tz='UTC'))
"""

# one cell per plotting function: (name, code whose last expression is the figure)
PLOTS = [
    ('plot_pr', "ev.plot_pr(ev.pr_table(y, score), {'model': (0.5, 0.5)})"),
    ('plot_confusion', "ev.plot_confusion(y, pred['alert'])"),
    ('plot_risk_timeline', "ev.plot_risk_timeline(pred, log, ['pump-0001', 'pump-0002'], 0.5)"),
    ('plot_detection',
     "ev.plot_detection(sig, sig.abs(), (sig > 0.9).astype(int), [(sig.index[20], sig.index[30])], 0.9)"),
    ('plot_coverage', "ex.plot_coverage(ex.data_quality(lake))"),
    ('plot_device', "ex.plot_device(lake, 'pump-0001')"),
    ('plot_reliability', "mo.plot_reliability({'model': mo.reliability_table(y, score)})"),
    ('plot_cost_curve', "mo.plot_cost_curve(mo.cost_curve(score, t, '48h'), 0.5)"),
    ('plot_rul', "mo.plot_rul(pd.Series(np.arange(50.)), pd.Series(np.arange(50.) + 3), 48)"),
    ('plot_folds', "mo.plot_folds(mo.fold_table(t, mo.time_folds(t, 2, '6h', 2)))"),
]
PICKER = "ex.device_picker(lake)"


def run(cells:list[str], tmp_path) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    NotebookClient(nb, kernel_name='python3', timeout=120, resources={'metadata': {'path': str(tmp_path)}},
                   kernel_manager_class=EncryptedKernelManager).execute()
    return nb


def images(outputs) -> int:
    return sum('image/png' in o.get('data', {}) for o in outputs)


def bare_figures(outputs) -> list[str]:
    "Outputs that show a figure only as text: a `<Figure ...>` with no image beside it, or printed."
    out = []
    for o in outputs:
        text = o.get('text', '') or o.get('data', {}).get('text/plain', '')
        if '<Figure' in text and 'image/png' not in o.get('data', {}): out.append(text)
    return out


def widget_outputs(nb) -> list[dict]:
    "Outputs held by the ipywidgets Output widgets of `nb` (nbclient records their state in the metadata)."
    state = nb.metadata.get('widgets', {}).get('application/vnd.jupyter.widget-state+json', {}).get('state', {})
    return [o for w in state.values() if w.get('model_name') == 'OutputModel' for o in w['state'].get('outputs', [])]


def check_cells(cells, stage:str):
    for (name, _), cell in zip(PLOTS, cells, strict=True):
        kinds = [list(o.get('data', {'stream': o.get('name')})) for o in cell.outputs]
        assert images(cell.outputs) == 1, f"{name} ({stage}): {images(cell.outputs)} images, outputs {kinds}"
        assert not bare_figures(cell.outputs), f"{name} ({stage}) shows {bare_figures(cell.outputs)}"


def test_every_library_figure_is_one_image(tmp_path):
    ("Each plotting function shows one PNG in a bare kernel, inside the picker's Output widget, and after `%matplotlib "
     "inline`.")
    n = len(PLOTS)
    nb = run([SETUP] + [code for _, code in PLOTS] + [PICKER, '%matplotlib inline'] + [code for _, code in PLOTS],
             tmp_path)
    check_cells(nb.cells[1:1 + n], 'no matplotlib backend')
    check_cells(nb.cells[n + 3:], 'after %matplotlib inline')
    picker = widget_outputs(nb)
    assert images(picker) == 1 and not bare_figures(picker), f"device_picker's Output widget holds {picker}"
    assert not [o for c in nb.cells for o in c.outputs if o.get('name') == 'stderr'], "a cell wrote to stderr"


# -- the train walkthrough with its defaults (issue 9, items 2 and 3) --------------------------------------------------

WALLS = ('does not have valid feature names', 'without encryption', 'np.float64(', '<Figure', 'calibration skipped',
         'no cross-validation fold', 'no validation fold holds a failure', 'NOT DONE')


def texts(nb) -> str:
    "Every text a reader sees in `nb`'s outputs."
    out = []
    for c in nb.cells:
        for o in c.get('outputs', []):
            out.append(o.get('text', '') if o['output_type'] == 'stream' else o.get('data', {}).get('text/plain', '')
                       if 'image/png' not in o.get('data', {}) else '')
            out.append(o.get('data', {}).get('text/html', '') + o.get('evalue', ''))
    return '\n'.join(out)


@pytest.mark.slow
def test_train_walkthrough_shows_everything_without_walls(tmp_path):
    ("workflows/train.ipynb run as papermill runs it (defaults: the example fleet) shows every section, images and no "
     "warnings.")
    from conftest import ROOT, run as sh
    out = tmp_path/'train.ipynb'
    r = sh(['papermill', '--engine', 'iot2ml', '--log-level', 'WARNING', '--no-progress-bar',
            str(ROOT/'nbs'/'workflows'/'train.ipynb'), str(out)], cwd=tmp_path)
    assert 'without encryption' not in r.stderr and 'Warning' not in r.stderr, r.stderr
    nb = nbformat.read(out, as_version=4)
    shown = texts(nb)
    assert not [w for w in WALLS if w in shown], [w for w in WALLS if w in shown]
    assert not [o for c in nb.cells for o in c.get('outputs',
                                                   []) if o.get('name') == 'stderr'], "a cell wrote to stderr"
    assert not [o for c in nb.cells for o in c.get('outputs', [])
                if 'application/vnd.jupyter.widget-view+json' in o.get('data', {})]
    code = [c for c in nb.cells if c.cell_type == 'code']
    assert [images(c.outputs) for c in code if 'plot_' in c.source] == [1, 1, 1]     # folds, reliability, cost curve
    summary = next(c for c in code if 'pipeline.train(' in c.source).outputs[0]['text']
    assert 'calibration  isotonic' in summary and 'least out-of-fold cost' in summary, summary   # done, and said so
    importance = next(c for c in code if 'importance(' in c.source).outputs[0]['data']['text/plain']
    assert 'pr_auc_drop' in importance
    costs = next(c for c in code if 'model.costs' in c.source).outputs[-1]['data']['text/plain']
    assert 'Empty DataFrame' not in costs
