"""One error family at the edge: the CLI turns exactly `Iot2mlError` (and click's usage errors) into one line on
stderr and exit status 1 (2 for usage); anything else is a bug and shows its traceback."""
import subprocess, sys
import pytest
from click.testing import CliRunner
from iot2ml.cli import cli
from iot2ml.errors import NotFound
from iot2ml.lake.store import Lake

@pytest.fixture
def project(tmp_path, monkeypatch):
    (tmp_path/'iot2ml.toml').write_text('')
    monkeypatch.chdir(tmp_path)
    return tmp_path

def test_a_family_error_is_one_line_and_exit_1(project, monkeypatch):
    def missing(self): raise NotFound("no dataset 'telemetry' in the lake", where='lake', fix="run `iot2ml simulate`")
    monkeypatch.setattr(Lake, 'catalog', missing)
    r = CliRunner().invoke(cli, ['lake', 'catalog'])
    assert (r.exit_code, r.output) == (1, "Error: lake: no dataset 'telemetry' in the lake; run `iot2ml simulate`\n")

def test_a_usage_error_is_click_s_exit_2(project):
    r = CliRunner().invoke(cli, ['sql', 'SELECT 1', '--format', 'xml'])
    assert r.exit_code == 2 and "Invalid value for '--format'" in r.output and 'Traceback' not in r.output
    r = CliRunner().invoke(cli, ['models', 'list', '--json', '--format', 'csv'])
    assert r.exit_code == 2 and '--json is short for --format json' in r.output

@pytest.mark.parametrize('exc, last', [("KeyError('bug')", "KeyError: 'bug'"),
                                       ("ValueError('a bug, not a message')", "ValueError: a bug, not a message")])
def test_a_bug_shows_its_traceback(project, exc, last):
    "A plain KeyError or ValueError from the library is a bug: the traceback reaches stderr, exit status non-zero."
    code = (f"import sys\nimport iot2ml.lake.store as store\n"
            f"def boom(self): raise {exc}\nstore.Lake.catalog = boom\n"
            f"from iot2ml.cli import main\nsys.argv = ['iot2ml', 'lake', 'catalog']\nmain()")
    r = subprocess.run([sys.executable, '-c', code], cwd=project, capture_output=True, text=True)
    assert r.returncode != 0 and r.stderr.startswith('Traceback (most recent call last)')
    assert r.stderr.strip().splitlines()[-1] == last

def test_in_process_a_bug_escapes(project, monkeypatch):
    def boom(self): raise KeyError('bug')
    monkeypatch.setattr(Lake, 'catalog', boom)
    r = CliRunner().invoke(cli, ['lake', 'catalog'])
    assert r.exit_code == 1 and isinstance(r.exception, KeyError) and r.output == ''
