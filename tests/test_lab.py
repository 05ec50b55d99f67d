"""A real JupyterLab in a real Chromium: `make lab` serves the project, `nbs/lake/01_explore.ipynb` runs top to bottom
on a lake, its figures are images (not `<Figure size ...>` text) and the device picker redraws its image.

Chromium is Debian's (`scripts/ensure-chromium.sh`, which `make pytest` runs), driven by the `playwright` package with
`executable_path`. Screenshots go to build/screenshots/."""
import json, os, re, secrets, shutil, signal, subprocess, urllib.request
from pathlib import Path
import pytest
from helpers import free_port

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = 'nbs/lake/01_explore.ipynb'
SHOTS = ROOT/'build'/'screenshots'
LAB_CMD = ['make', 'lab']   # as a person starts it; LAB_ARGS are appended to `jupyter lab`
# JupyterLab settings for the test only: no autosave (the run must not write outputs into the notebook), every cell
# in the DOM (no windowing), no news or update pop-ups over the page.
LAB_SETTINGS = {'@jupyterlab/docmanager-extension/plugin': {'autosave': False},
                '@jupyterlab/notebook-extension/tracker': {'windowingMode': 'none'},
                '@jupyterlab/apputils-extension/notification': {'checkForUpdates': False, 'fetchNews': 'false'}}
TIMEOUT_MS = 240_000   # the whole notebook on 2 busy cores


def _chromium() -> str:
    exe = shutil.which('chromium') or '/usr/bin/chromium'
    if not Path(exe).exists(): pytest.fail("chromium is not installed: run 'bash scripts/ensure-chromium.sh' (as "
                                           "root), then the test again")
    return exe

def _get(url:str):
    with urllib.request.urlopen(url, timeout=5) as r: return json.loads(r.read() or b'null')

def _wait_for_server(proc, url:str, log:Path, timeout:float=180):
    "Poll `url` until the server answers; fail early with its log when the process ends."
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None: pytest.fail(f"make lab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try: return _get(url)
        except OSError: time.sleep(0.5)
    pytest.fail(f"JupyterLab did not answer {url} within {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope='module')
def small_lake(tmp_path_factory):
    "A small simulated lake (4 devices, 10 days) in a data folder of its own, as `make demo` lays it out."
    from iot2ml.lake.store import Lake
    from iot2ml.ml.pipeline import simulate_to_lake
    from iot2ml.sim.fleet import FleetSpec
    data = tmp_path_factory.mktemp('data')
    simulate_to_lake(FleetSpec(pumps=4, days=10, freq='5min', seed=3, fault_rate=3), Lake(data/'lake', fsync=False))
    return data

@pytest.fixture(scope='module')
def lab(tmp_path_factory, small_lake):
    ("JupyterLab started with `make lab` on a free port, the project's data folder pointed at `small_lake`; stopped "
     "after.")
    port, token, tmp = free_port(), secrets.token_hex(16), tmp_path_factory.mktemp('lab')
    for name, value in LAB_SETTINGS.items():
        f = tmp/'settings'/f'{name}.jupyterlab-settings'
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(value))
    args = (f'--no-browser --port={port} --IdentityProvider.token={token} --ServerApp.ip=127.0.0.1 '
            f'--LabApp.user_settings_dir={tmp/"settings"} --LabApp.workspaces_dir={tmp/"workspaces"}')
    log = tmp/'lab.log'
    env = os.environ | {'IOT2ML_DATA_DIR': str(small_lake), 'JUPYTER_CONFIG_DIR': str(tmp/'config')}
    before = (ROOT/NOTEBOOK).read_bytes()
    with open(log, 'wb') as out:
        proc = subprocess.Popen([*LAB_CMD, f'LAB_ARGS={args}'], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)   # its own process group: make, jupyter and what they start
    base = f'http://127.0.0.1:{port}'
    try:
        _wait_for_server(proc, f'{base}/api/status?token={token}', log)
        yield dict(base=base, token=token, log=log)
        for s in _get(f'{base}/api/sessions?token={token}'):   # shut the kernels down before the server
            req = urllib.request.Request(f"{base}/api/sessions/{s['id']}?token={token}", method='DELETE')
            urllib.request.urlopen(req, timeout=10).close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try: proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        after = (ROOT/NOTEBOOK).read_bytes()
        if after != before: (ROOT/NOTEBOOK).write_bytes(before)
    assert after == before, f"the browser run changed {NOTEBOOK} (autosave?); it was restored"


ALL_RUN = """() => {
  const prompts = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')]
    .map(p => p.textContent.trim());
  const error = document.querySelector('.jp-Notebook [data-mime-type="application/vnd.jupyter.stderr"], '
    + '.jp-Notebook .jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"]');
  return error !== null || (prompts.length > 0 && prompts.every(p => /^\\[\\d+\\]:$/.test(p)));
}"""

@pytest.mark.slow
def test_explore_runs_in_jupyterlab_with_image_figures_and_a_live_picker(lab, small_lake):
    from playwright.sync_api import sync_playwright, expect
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=_chromium(), headless=True)
        try:
            page = browser.new_page(viewport={'width': 1400, 'height': 1000})
            page.set_default_timeout(60_000)
            expect.set_options(timeout=60_000)
            page.goto(f"{lab['base']}/lab/tree/{NOTEBOOK}?token={lab['token']}")
            nb = page.locator('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook')
            expect(nb.locator('.jp-Cell').first).to_be_visible()
            # the status bar
            expect(page.get_by_text(re.compile(r'^Python 3 \(ipykernel\) \| Idle$'))).to_be_visible(timeout=120_000)

            page.locator('#jp-MainMenu').get_by_text('Run', exact=True).click()
            page.get_by_text('Run All Cells', exact=True).click()
            try: page.wait_for_function(ALL_RUN, timeout=TIMEOUT_MS, polling=500)
            finally: page.screenshot(path=SHOTS/'explore_after_run_all.png')
            idle = page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]')
            expect(idle).to_have_count(1, timeout=TIMEOUT_MS)
            page.screenshot(path=SHOTS/'explore_top.png')

            errors = nb.locator('[data-mime-type="application/vnd.jupyter.stderr"], '
                                '[data-mime-type="application/vnd.jupyter.error"]')
            assert errors.count() == 0, errors.first.inner_text()[:2000]
            outputs = nb.locator('.jp-OutputArea-output').all_inner_texts()
            # the lake, not the example
            assert any(f"the lake at {small_lake/'lake'}" in t for t in outputs), outputs[:3]
            assert not [t for t in outputs if '<Figure size' in t], "a figure rendered as text, not as an image"
            assert nb.locator('.jp-OutputArea-output img').count() >= 3   # coverage, one device, the picker's drawing

            picker = nb.locator('.widget-vbox').filter(has=page.locator('.widget-dropdown')).first
            picker.scroll_into_view_if_needed()
            # both days in full
            expect(picker.get_by_text(re.compile(r'^\d{4}-\d\d-\d\d to \d{4}-\d\d-\d\d$'))).to_have_count(1)
            img = picker.locator('.widget-output img').first
            expect(img).to_be_visible()
            src = img.get_attribute('src')
            picker.screenshot(path=SHOTS/'explore_picker_before.png')
            select = picker.locator('.widget-dropdown select')
            assert select.locator('option').count() == 4   # the lake's 4 devices
            select.select_option(index=1)
            page.wait_for_function("([el, old]) => el.isConnected && el.src !== old || !el.isConnected",
                                   arg=[img.element_handle(), src], timeout=60_000)
            expect(picker.locator('.widget-output img')).to_have_count(1)
            assert picker.locator('.widget-output img').first.get_attribute('src') != src, ("the picker did not redraw "
                                                                                            "its image")
            picker.screenshot(path=SHOTS/'explore_picker_after.png')
            page.screenshot(path=SHOTS/'explore_page.png', full_page=True)
        finally:
            browser.close()


def test_walkthrough_lake_prefers_the_project_lake_and_says_when_it_falls_back(small_lake, tmp_path, monkeypatch):
    from iot2ml.ml.pipeline import walkthrough_lake
    from iot2ml.lake.store import LakeError
    monkeypatch.chdir(ROOT/'nbs')                                   # where the notebooks run
    monkeypatch.setenv('IOT2ML_DATA_DIR', str(small_lake))
    lake, note = walkthrough_lake()
    assert lake.root == small_lake/'lake' and note.startswith(f"data: the lake at {small_lake/'lake'}")
    # a project whose lake is empty: the example, said out loud
    monkeypatch.setenv('IOT2ML_DATA_DIR', str(tmp_path))
    lake, note = walkthrough_lake()
    assert lake.root != tmp_path/'lake' and 'EXAMPLE fleet' in note and str(tmp_path/'lake') in note
    with pytest.raises(LakeError, match='holds no processed'):     # a lake asked for by name is never swapped
        walkthrough_lake(tmp_path/'lake')


def _outputs(nb:dict) -> list[dict]:
    return [o for c in nb['cells'] if c['cell_type'] == 'code' for o in c.get('outputs', [])]

@pytest.mark.slow
@pytest.mark.parametrize('name', ['ml/03_detect', 'lake/01_explore'])
def test_walkthrough_runs_on_the_lake_given_as_parameter(name, small_lake, tmp_path):
    "papermill with -p lake_dir: the notebook says it reads that lake, and its figures are PNGs."
    import papermill as pm
    out = tmp_path/f"{name.replace('/', '_')}.ipynb"
    run = lambda: pm.execute_notebook(ROOT/'nbs'/f'{name}.ipynb', out, parameters={'lake_dir': str(small_lake/'lake')},
                                      cwd=(ROOT/'nbs'/name).parent, kernel_name='python3', progress_bar=False,
                                      execution_timeout=240)
    try: run()
    except TimeoutError as e:
        # Once in four full runs on 2 busy workers a cell never got its reply (the notebook takes ~30 s; the kernel's
        # random TCP ports are a suspect). Say so, and run it once more with a new kernel: the same checks apply.
        print(f"{name}: a cell got no reply within 240 s ({str(e)[:200]}); running the notebook once more with a new "
              f"kernel")
        run()
    outs = _outputs(json.loads(out.read_text()))
    text = ''.join(''.join(o.get('text', '')) for o in outs if o['output_type'] == 'stream')
    assert f"data: the lake at {small_lake/'lake'}" in text and 'EXAMPLE' not in text
    assert any('image/png' in o.get('data', {}) for o in outs)
    as_text = [o for o in outs if 'image/png' not in o.get('data', {})
               and '<Figure size' in ''.join(o.get('data', {}).get('text/plain', ''))]
    assert not as_text, "a figure is text, not an image"
