"""iot2ml._io: atomic writes, and a private file that is private from its first byte."""
import os
from iot2ml._io import atomic_path, write_atomic

def test_a_private_file_is_private_while_it_is_written(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path/'secret', mode=0o600) as tmp:
            assert oct(tmp.stat().st_mode & 0o777) == '0o600'   # before a byte of the secret is in it
            tmp.write_text('token')
            assert oct(tmp.stat().st_mode & 0o777) == '0o600'
    finally: os.umask(old)
    assert (tmp_path/'secret').read_text() == 'token' and oct((tmp_path/'secret').stat().st_mode & 0o777) == '0o600'

def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    write_atomic(tmp_path/'card.json', '{"v": 1}')
    try:
        with atomic_path(tmp_path/'card.json', mode=0o600) as tmp:
            tmp.write_text('half')
            raise OSError('disk full')
    except OSError: pass
    assert (tmp_path/'card.json').read_text() == '{"v": 1}' and [p.name for p in tmp_path.iterdir()] == ['card.json']
