"""`make lab` serves the project root (so build/ opens too), starts on nbs/, runs as root with a note, takes LAB_ARGS
last. Checked through the Jupyter server's contents API (the browser test is tests/test_lab.py)."""
import json, os, re, secrets, signal, subprocess, time, urllib.error, urllib.request
from pathlib import Path
import pytest
from helpers import free_port

ROOT = Path(__file__).resolve().parents[1]

def _status(url:str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r: return r.status
    except urllib.error.HTTPError as e: return e.code

def _until(cond, proc, log:Path, what:str, timeout:float=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None: pytest.fail(f"make lab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if cond(): return
        except OSError: pass
        time.sleep(0.3)
    pytest.fail(f"{what} within {timeout} s:\n{log.read_text()[-3000:]}")

def readme_paths() -> list[str]:
    ("The notebook and build paths the README sends people to (globs expanded), e.g. nbs/lake/01_explore.ipynb, "
     "build/report/report.html.")
    found = set(re.findall(r"`((?:nbs|build)/[\w./*{},-]+?\.(?:ipynb|html|json))`", (ROOT/'README.md').read_text()))
    out = []
    for p in sorted(found):
        if '{' in p: continue
        out += [q.relative_to(ROOT).as_posix() for q in ROOT.glob(p)] if '*' in p else [p]
    return list(dict.fromkeys(out))

def test_make_lab_opens_the_project_root(tmp_path):
    port, token, log = free_port(), secrets.token_hex(8), tmp_path/'lab.log'
    args = f"--no-browser --port={port} --IdentityProvider.token={token} --ServerApp.ip=127.0.0.1"
    env = os.environ | {'JUPYTER_RUNTIME_DIR': str(tmp_path/'runtime')}
    with open(log, 'w') as f:
        proc = subprocess.Popen(['make', 'lab', f'LAB_ARGS={args}'], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                env=env,
                                start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _until(lambda: _status(f"{base}/api/status?token={token}") == 200, proc, log, "JupyterLab did not answer")
        _until(lambda: f"{base}/lab/tree/nbs" in log.read_text(), proc, log, "make lab printed no URL opening nbs/")
        text = log.read_text()
        if os.geteuid() == 0: assert '--allow-root' in text and 'running as root' in text, text[-2000:]
        assert text.rstrip().count(args) >= 1   # LAB_ARGS reached jupyter lab
        # the root is the project: README, Makefile, nbs/ and (after make demo) build/ are all inside it
        names = {'nbs', 'README.md', 'Makefile', 'dvc.yaml'}
        with urllib.request.urlopen(f"{base}/api/contents/?content=1&token={token}", timeout=5) as r:
            listed = {c['name'] for c in json.loads(r.read())['content']}
        assert names <= listed, listed
        paths = readme_paths()
        assert 'nbs/lake/01_explore.ipynb' in paths and 'build/report/report.html' in paths, paths
        for p in paths:
            if (ROOT/p).exists(): assert _status(f"{base}/api/contents/{p}?content=0&token={token}") == 200, p
        assert _status(f"{base}/lab/tree/nbs?token={token}") == 200
    finally:   # make and jupyter share the session started for them
        try: os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError: pass
        try: proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
