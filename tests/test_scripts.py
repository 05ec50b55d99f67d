"scripts/: the apt-get helper that ensure-chromium.sh and ensure-mosquitto.sh source says what to run when not root."
import os, subprocess
from pathlib import Path
from conftest import ROOT

def require_root(tmp_path:Path, uid:str, path_dirs:list[str]) -> subprocess.CompletedProcess:
    "Run lib-apt.sh's `apt_require_root` for chromium with `id -u` printing `uid` and only `path_dirs` on PATH."
    fake = tmp_path/'bin'
    fake.mkdir(exist_ok=True)
    (fake/'id').write_text(f'#!/bin/sh\necho {uid}\n')
    (fake/'id').chmod(0o755)
    script = '. scripts/lib-apt.sh; apt_require_root chromium chromium "install it yourself"; echo passed'
    env = os.environ | {'PATH': os.pathsep.join([str(fake), *path_dirs])}
    return subprocess.run(['/bin/bash', '-c', script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)

def test_not_root_says_which_command_to_run(tmp_path):
    r = require_root(tmp_path, '1000', ['/usr/bin', '/bin'])
    assert r.returncode == 1 and 'passed' not in r.stdout
    assert r.stderr.startswith("chromium is not installed: run 'sudo apt-get update && sudo apt-get install -y "
                               "chromium'")

def test_root_without_apt_get_says_what_to_do(tmp_path):
    r = require_root(tmp_path, '0', [])   # nothing on PATH but the fake id: no apt-get
    assert r.returncode == 1
    assert r.stderr.strip() == 'chromium is not installed and apt-get is missing: install it yourself'

def test_root_with_apt_get_goes_on(tmp_path):
    (tmp_path/'apt'/'apt-get').parent.mkdir()
    (tmp_path/'apt'/'apt-get').write_text('#!/bin/sh\nexit 0\n')
    (tmp_path/'apt'/'apt-get').chmod(0o755)
    r = require_root(tmp_path, '0', [str(tmp_path/'apt')])
    assert r.returncode == 0 and r.stdout.strip() == 'passed', r.stderr
