"The iot2ml command: every command documented with an example, plain errors, and the commands doing their job."
import json
import pytest
from click.testing import CliRunner
from iot2ml.cli.main import cli

def test_top_level_help_and_version():
    r = CliRunner().invoke(cli, ['--help'])
    assert r.exit_code == 0 and 'Examples:' in r.output and 'simulate' in r.output
    assert CliRunner().invoke(cli, ['--version']).output.startswith('iot2ml, version ')

@pytest.fixture
def project(tmp_path, monkeypatch):
    (tmp_path/'iot2ml.toml').write_text('[simulate]\npumps = 3\ndays = 2\nfreq = "10min"\nseed = 1\n')
    monkeypatch.chdir(tmp_path)
    return tmp_path

def test_simulate_catalog_sql(project):
    r = CliRunner().invoke(cli, ['simulate', '--quiet'])
    assert r.exit_code == 0, r.output
    assert 'Landed ' in r.output and (project/'data/lake/processed/telemetry').is_dir()
    r = CliRunner().invoke(cli, ['lake', 'catalog', '--json'])
    cat = {(e['tier'], e['name']): e for e in json.loads(r.output)}
    assert cat[('processed', 'telemetry')]['rows'] > 3 * 2 * 144 * 6
    r = CliRunner().invoke(cli, ['sql', "SELECT count(DISTINCT device_id) AS n FROM telemetry", '--format', 'json'])
    assert json.loads(r.output) == [{'n': 3}]
    # the same fleet again: nothing new is stored
    rows = cat[('raw', 'telemetry')]['rows']
    assert CliRunner().invoke(cli, ['simulate', '--quiet']).exit_code == 0
    cat2 = {(e['tier'], e['name']): e for e in json.loads(CliRunner().invoke(cli,
                                                                             ['lake', 'catalog', '--json']).output)}
    assert cat2[('raw', 'telemetry')]['rows'] == rows

def test_sql_refuses_in_one_line_and_writes_nothing(project):
    ("`iot2ml sql` is the lake's sandbox: a second statement, a file outside the lake or a slow query is one line, "
     "exit 1.")
    assert CliRunner().invoke(cli, ['simulate', '--quiet']).exit_code == 0
    before = sorted(p for p in project.rglob('*') if p.is_file())
    r = CliRunner().invoke(cli, ['sql', "SELECT 1; COPY (SELECT 42 AS x) TO 'x.csv'"])
    assert r.exit_code == 1 and r.output == ("Error: sql runs exactly one statement and this text has 2; "
                                             "send one SELECT (a ';' ends a statement)\n")
    r = CliRunner().invoke(cli, ['sql', "SELECT * FROM read_csv('/etc/passwd')"])
    assert r.exit_code == 1
    assert r.output.startswith("Error: the query may read only the lake's own files")
    assert r.output.count('\n') == 1
    r = CliRunner().invoke(cli, ['sql',
                                 "SELECT count(*) FROM range(1000000) a, range(1000000) b WHERE a.range + b.range < 0",
                                 '--timeout', '0.5'])
    assert r.exit_code == 1 and r.output == "Error: the query ran longer than 0.5 s; narrow it or raise --timeout\n"
    r = CliRunner().invoke(cli, ['sql', "SELECT list(range) FROM range(100000000)", '--memory-limit', '64MB'])
    assert r.exit_code == 1 and r.output == ("Error: the query needs more than 64MB of memory; narrow it or raise "
                                             "--memory-limit\n")
    r = CliRunner().invoke(cli, ['sql', "SELECT count(*) AS n FROM reference.assets", '--format', 'json', '--timeout',
                                 '30',
                                 '--memory-limit', '1GB'])
    assert r.exit_code == 0 and json.loads(r.output) == [{'n': 3}]
    assert sorted(p for p in project.rglob('*') if p.is_file()) == before

def test_another_fleet_needs_replace(project):
    assert CliRunner().invoke(cli, ['simulate', '--quiet']).exit_code == 0
    r = CliRunner().invoke(cli, ['simulate', '--quiet', '--seed', '2'])
    assert r.exit_code == 1 and 'holds another simulated fleet' in r.output and '--replace' in r.output
    assert CliRunner().invoke(cli, ['simulate', '--quiet', '--seed', '2', '--replace']).exit_code == 0

def test_errors_are_one_plain_line(project):
    (project/'iot2ml.toml').write_text('[simulate]\npumsp = 3\n')
    r = CliRunner().invoke(cli, ['lake', 'catalog'])
    assert r.exit_code == 1
    toml = project/'iot2ml.toml'
    assert r.output.strip() == f"Error: unknown key 'simulate.pumsp' in {toml}; did you mean 'simulate.pumps'?"
    (project/'iot2ml.toml').write_text('')
    r = CliRunner().invoke(cli, ['sql', 'DELETE FROM telemetry'])
    assert r.exit_code == 1 and 'read-only' in r.output and 'Traceback' not in r.output
    r = CliRunner().invoke(cli, ['metrics', '--file', 'nope.json'])
    assert r.exit_code == 1 and 'run `dvc repro`' in r.output
    r = CliRunner().invoke(cli, ['simulate', '--pumps', '0'])
    assert r.exit_code == 2 and "--pumps" in r.output
