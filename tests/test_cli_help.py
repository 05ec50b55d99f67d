("Every command and subcommand of `iot2ml` answers `--help` (and `-h`) with an Example block that runs it, as "
 "sqlite-utils does.")
import click, pytest
from click.testing import CliRunner
from iot2ml.cli import cli

def commands(group=cli, prefix=()):
    for name, c in group.commands.items():
        yield prefix + (name,)
        if isinstance(c, click.Group): yield from commands(c, prefix + (name,))

@pytest.mark.parametrize('path', list(commands()), ids=' '.join)
def test_help_ends_with_an_example(path):
    r = CliRunner().invoke(cli, [*path, '--help'])
    assert r.exit_code == 0, r.output
    head, _, example = r.output.rpartition('Example')
    assert head and example.startswith((':', 's:')), r.output
    assert 'iot2ml ' + ' '.join(path) in example.split('Options:')[0], r.output
    assert CliRunner().invoke(cli, [*path, '-h']).output == r.output

def test_the_walk_finds_every_group_and_the_new_commands():
    paths = set(commands())
    assert {('stream',), ('lake', 'catalog'), ('devices', 'add-admin'), ('models', 'history'),
            ('deadletters', 'replay'),
            ('broker-config',), ('scheduler',)} <= paths
    assert len(paths) == 33, sorted(paths)

def test_one_output_option():
    "`--format` has one set of choices everywhere it takes all four, and `--json` means `--format json`."
    for path in commands():
        cmd = cli
        for name in path: cmd = cmd.commands[name]
        opts = {o.name: o for o in cmd.params}
        if 'fmt' in opts and path != ('import',):
            assert set(opts['fmt'].type.choices) <= {'table', 'csv', 'json', 'jsonl'} and 'as_json' in opts, path
        assert 'as_json' not in opts or 'fmt' in opts, path
