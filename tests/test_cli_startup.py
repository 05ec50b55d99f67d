("`iot2ml --help` and `--version` start in a blink: importing the CLI imports nothing heavy (each command imports what "
 "it needs).")
import json, subprocess, sys
from conftest import BIN
from iot2ml.cli import cli

HEAVY = ('pandas', 'pyarrow', 'sklearn', 'duckdb', 'numpy', 'scipy', 'fastapi', 'pydantic', 'uvicorn', 'httpx')

def heavy_after(code:str) -> list[str]:
    "The heavy modules loaded by `code` in a fresh interpreter."
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    r = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True, check=True)
    return json.loads(r.stdout.splitlines()[-1])

def test_import_cli_is_light():
    assert heavy_after("import iot2ml.cli") == []

def test_help_and_version_are_light():
    run = "from iot2ml.cli import cli\ntry: cli([{!r}], prog_name='iot2ml')\nexcept SystemExit: pass"
    assert heavy_after(run.format('--help')) == []
    assert heavy_after(run.format('--version')) == []

def test_help_lists_every_command():
    r = subprocess.run([str(BIN/'iot2ml'), '--help'], capture_output=True, text=True, check=True)
    listed = {l.split()[0] for l in r.stdout.split('Commands:')[1].splitlines() if l.strip()}
    assert listed == set(cli.commands) and {'simulate', 'stream', 'demo', 'sql', 'models'} <= listed
