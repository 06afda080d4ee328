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
    assert cfg.epochs == 5 and cfg.sizes == (1.0, 0.5) and cfg.budget.text == "2ms" and cfg.budget.ms == 2.0
    assert cfg.to_dict()["budget"] == "2ms"
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


def test_config_keys_are_the_flag_names(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('teacher = "t.pt"\nbudget = "0.5x"\ntrials = 3\nspaces = ["cnn"]\nalso_profile = ["raspberry-pi-5"]\n'
                 'losses = ["dkd:0.5", "rkd"]\n')
    cfg = resolve_config(load_config_file(p), {})
    assert (cfg.trials, cfg.spaces, cfg.also_profile) == (3, ("cnn",), ("raspberry-pi-5",))
    assert cfg.budget.relative and cfg.budget.factor == 0.5
    assert cfg.loss_weights == (("dkd", 0.5), ("rkd", 1.0))
    p.write_text('search_trials = 3\n')  # the old internal name is not a flag
    with pytest.raises(ConfigError, match="unknown key 'search_trials'"):
        load_config_file(p)


@pytest.mark.parametrize("option,value,match", [
    ("sampler", "grid", "sampler must be one of nsga2, tpe"),
    ("proxy", "diswat", "unknown proxy 'diswat'; did you mean diswot"),
    ("proxy", "diswot+nope", "unknown proxy 'nope'"),
    ("spaces", ("cnn", "resnet"), "unknown search space 'resnet'"),
    ("profile", "raspberry-pi-6", "unknown hardware profile 'raspberry-pi-6'"),
    ("also_profile", ("nope",), "unknown hardware profile 'nope'"),
    ("losses", ("dkk",), "unknown distillation loss 'dkk'"),
    ("losses", ("dkd:heavy",), "weight after ':' must be a number"),
    ("method", "prune", "method must be one of nested, skeleton"),
    ("trials", 0, "trials must be at least 1"),
])
def test_every_option_is_validated_before_any_work(option, value, match):
    with pytest.raises(ConfigError, match=match) as e:
        resolve_config({}, {"teacher": "t.pt", "budget": "1ms", option: value})
    assert "\n" not in str(e.value)
