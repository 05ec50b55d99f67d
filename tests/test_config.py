"Settings from iot2ml.toml and IOT2ML_* variables, and params.yaml: unknown keys are errors with a suggestion."
import pytest
from iot2ml.config import load_settings, load_params, ConfigError

@pytest.fixture
def toml(tmp_path):
    def write(text):
        p = tmp_path/'iot2ml.toml'
        p.write_text(text)
        return p
    return write

def test_file_then_env_then_overrides(toml, monkeypatch):
    p = toml('[simulate]\npumps = 7\ndays = 3\n')
    assert load_settings(p).simulate.pumps == 7
    monkeypatch.setenv('IOT2ML_SIMULATE__PUMPS', '11')
    s = load_settings(p, simulate__days=5)
    assert (s.simulate.pumps, s.simulate.days) == (11, 5)

def test_unknown_key_in_file_names_it_and_suggests(toml):
    with pytest.raises(ConfigError,
                       match=r"^unknown key 'lake\.compresion' in .*iot2ml\.toml; did you mean 'lake\.compression'\?$"):
        load_settings(toml('[lake]\ncompresion = "zstd"\n'))

def test_unknown_section(toml):
    with pytest.raises(ConfigError, match=r"unknown key 'simulat' in .*; did you mean 'simulate'\?"):
        load_settings(toml('[simulat]\npumps = 3\n'))

def test_unknown_env_variable(toml, monkeypatch):
    monkeypatch.setenv('IOT2ML_LAEK__COMPRESSION', 'zstd')
    with pytest.raises(ConfigError,
                       match=r"unknown environment variable IOT2ML_LAEK__COMPRESSION; did you mean 'IOT2ML_LAKE'\?"):
        load_settings(toml(''))

def test_unknown_nested_env_key(toml, monkeypatch):
    monkeypatch.setenv('IOT2ML_LAKE__COMPRESION', 'zstd')
    with pytest.raises(ConfigError, match=r"unknown key 'lake\.compresion' in IOT2ML_LAKE__COMPRESION; did you mean "
                                          r"'lake\.compression'\?"):
        load_settings(toml(''))

def test_bad_value_names_key_and_source(toml):
    with pytest.raises(ConfigError,
                       match=r"'simulate\.pumps' in .*iot2ml\.toml is 'many': input should be a valid integer"):
        load_settings(toml('[simulate]\npumps = "many"\n'))

def test_bad_toml(toml):
    with pytest.raises(ConfigError, match=r"is not valid TOML"):
        load_settings(toml('[simulate\n'))

def test_params_unknown_key(tmp_path):
    p = tmp_path/'params.yaml'
    p.write_text('train:\n  max_iters: 10\n')
    with pytest.raises(ConfigError,
                       match=r"unknown key 'train\.max_iters' in .*params\.yaml; did you mean 'train\.max_iter'\?"):
        load_params(p)

def test_repo_params_and_config_load():
    from pathlib import Path
    root = Path(__file__).parents[1]
    assert load_params(root/'params.yaml').features.horizon_hours > 0
    assert load_settings(root/'iot2ml.toml').simulate.pumps == 50
