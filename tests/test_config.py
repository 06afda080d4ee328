import pytest

from compressor.config import load_config_file, parse_budget, resolve_config
from compressor.errors import ConfigError


@pytest.mark.parametrize("text,ms", [("5ms", 5.0), ("800us", 0.8), ("0.01s", 10.0), (" 2.5 ms ", 2.5),
                                     ("1e3us", 1.0), ("3µs", 0.003)])
def test_budget_units(text, ms):
    assert parse_budget(text).ms == pytest.approx(ms)


@pytest.mark.parametrize("text", ["5", "5 mins", "ms", "-1ms", "0ms", "five ms", "5msec", "", 5])
def test_bad_budget_is_one_line_config_error(text):
    with pytest.raises(ConfigError) as e:
        parse_budget(text)
    assert "\n" not in str(e.value)


def test_config_file_toml_and_unknown_key(tmp_path):
    good = tmp_path / "c.toml"
    good.write_text('teacher = "t.pt"\nbudget = "2ms"\nepochs = 3\nsizes = [1.0, 0.5]\n')
    values = load_config_file(good)
    cfg = resolve_config(values, {"epochs": 5})
    assert cfg.epochs == 5 and cfg.sizes == (1.0, 0.5) and cfg.budget == "2ms"
    bad = tmp_path / "bad.toml"
    bad.write_text('teacher = "t.pt"\nepochz = 3\n')
    with pytest.raises(ConfigError, match="epochz.*did you mean epochs"):
        load_config_file(bad)


def test_config_file_bad_type_and_syntax(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('epochs = "many"\n')
    with pytest.raises(ConfigError, match="epochs must be an integer"):
        load_config_file(p)
    p.write_text("epochs = = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config_file(p)
    j = tmp_path / "c.json"
    j.write_text('{"teacher": "t.pt", "budget": "1ms", "int8": true}')
    assert load_config_file(j)["int8"] is True


def test_missing_required():
    with pytest.raises(ConfigError, match="no teacher"):
        resolve_config({}, {"budget": "1ms"})
    with pytest.raises(ConfigError, match="no budget"):
        resolve_config({}, {"teacher": "t.pt"})
    with pytest.raises(ConfigError, match="cannot parse budget"):
        resolve_config({}, {"teacher": "t.pt", "budget": "fast"})
