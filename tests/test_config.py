"""Where the root and config file come from, and what an invalid config file does."""

import json
from pathlib import Path

import pytest
from helpers import run_cli

from necropool.ground.config import load_settings


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --- root precedence: --root > NECROPOOL_HOME > config root > $XDG_DATA_HOME/necropool ---------


@pytest.fixture
def places(tmp_path, monkeypatch):
    """Every candidate root, with the environment set as a user would have it."""
    p = {name: tmp_path / name for name in ("flag", "env", "cfg", "data", "home")}
    monkeypatch.setenv("HOME", str(p["home"]))
    monkeypatch.setenv("NECROPOOL_HOME", str(p["env"]))
    monkeypatch.setenv("XDG_DATA_HOME", str(p["data"]))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.delenv("NECROPOOL_CONFIG", raising=False)
    write(tmp_path / "xdg-config/necropool/config.toml", f'root = "{p["cfg"]}"\n')
    return p


def created_under(*args) -> Path:
    """Create a one-slot pool and return the root it landed in."""
    result = run_cli(*args, "--json")
    assert result.code == 0, result
    path = Path(result.json()["path"])
    assert path.parts[-2:] == ("pools", "p")
    return path.parent.parent


def test_root_flag_beats_everything(places, upstream):
    assert created_under("--root", places["flag"], "create", "p", upstream, "--slots", "1") \
        == places["flag"]
    assert not places["env"].exists() and not places["cfg"].exists()


def test_necropool_home_beats_config_and_xdg(places, upstream):
    assert created_under("create", "p", upstream, "--slots", "1") == places["env"]
    assert not places["cfg"].exists() and not places["data"].exists()


def test_config_root_beats_xdg_data_home(places, upstream, monkeypatch):
    monkeypatch.delenv("NECROPOOL_HOME")
    assert created_under("create", "p", upstream, "--slots", "1") == places["cfg"]
    assert not places["data"].exists()


def test_xdg_data_home_is_the_default(places, upstream, monkeypatch, tmp_path):
    monkeypatch.delenv("NECROPOOL_HOME")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-config-here"))
    assert created_under("create", "p", upstream, "--slots", "1") == \
        places["data"] / "necropool"


def test_home_local_share_without_xdg_data_home(places, upstream, monkeypatch, tmp_path):
    monkeypatch.delenv("NECROPOOL_HOME")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-config-here"))
    monkeypatch.delenv("XDG_DATA_HOME")
    assert created_under("create", "p", upstream, "--slots", "1") == \
        places["home"] / ".local/share/necropool"


def test_relative_xdg_values_are_ignored(places, monkeypatch, tmp_path):
    """The XDG spec says relative values are invalid and must be ignored."""
    monkeypatch.delenv("NECROPOOL_HOME")
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/config")
    monkeypatch.setenv("XDG_DATA_HOME", "relative/data")
    settings = load_settings()
    assert settings.root == places["home"] / ".local/share/necropool"
    assert settings.config_path is None


def test_config_root_expands_tilde(places, upstream, monkeypatch, tmp_path):
    monkeypatch.delenv("NECROPOOL_HOME")
    write(tmp_path / "xdg-config/necropool/config.toml", 'root = "~/pools-here"\n')
    assert created_under("create", "p", upstream, "--slots", "1") == \
        places["home"] / "pools-here"


def test_root_that_is_a_file_is_a_usage_error(places, tmp_path):
    afile = write(tmp_path / "afile", "x")
    result = run_cli("--root", afile, "list")
    assert result.code == 2, result
    assert str(afile) in result.stderr


# --- config precedence: --config > NECROPOOL_CONFIG > $XDG_CONFIG_HOME/necropool/config.toml -----


@pytest.fixture
def configs(tmp_path, monkeypatch):
    """Three config files, each pointing at its own root."""
    monkeypatch.delenv("NECROPOOL_HOME", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    files = {}
    for name, path in (("flag", tmp_path / "flag.toml"), ("env", tmp_path / "env.toml"),
                       ("xdg", tmp_path / "xdg/necropool/config.toml")):
        files[name] = write(path, f'root = "{tmp_path / ("root-" + name)}"\n')
    monkeypatch.setenv("NECROPOOL_CONFIG", str(files["env"]))
    return files


def test_config_flag_beats_env_and_default(configs, upstream, tmp_path):
    assert created_under("--config", configs["flag"], "create", "p", upstream, "--slots", "1") \
        == tmp_path / "root-flag"


def test_necropool_config_beats_default(configs, upstream, tmp_path):
    assert created_under("create", "p", upstream, "--slots", "1") == tmp_path / "root-env"


def test_default_config_location(configs, upstream, tmp_path, monkeypatch):
    monkeypatch.delenv("NECROPOOL_CONFIG")
    assert created_under("create", "p", upstream, "--slots", "1") == tmp_path / "root-xdg"


def test_only_the_chosen_config_file_is_read(configs, tmp_path):
    """A broken lower-precedence file does not matter when a higher one is chosen."""
    write(configs["env"], "this is not toml")
    write(configs["xdg"], "neither = is = this")
    chosen = run_cli("--config", configs["flag"], "list")  # read: its root has no pool yet
    assert chosen.code == 4 and "no pools under" in chosen.stderr, chosen
    broken = run_cli("list")
    assert broken.code == 2 and str(configs["env"]) in broken.stderr


@pytest.mark.parametrize("how", ["flag", "env"])
def test_an_explicit_config_that_does_not_exist_is_an_error(configs, tmp_path, monkeypatch, how):
    missing = tmp_path / "missing.toml"
    if how == "env":
        monkeypatch.setenv("NECROPOOL_CONFIG", str(missing))
        result = run_cli("list")
    else:
        result = run_cli("--config", missing, "list")
    assert result.code == 2, result
    assert str(missing) in result.stderr


def test_a_missing_default_config_is_fine(configs, monkeypatch, tmp_path):
    monkeypatch.delenv("NECROPOOL_CONFIG")
    configs["xdg"].unlink()
    result = run_cli("list")  # the default root, which holds no pool (exit 4, naming it)
    assert result.code == 4 and str(tmp_path / "data/necropool") in result.stderr, result
    assert load_settings().root == tmp_path / "data/necropool"


def test_a_valid_config_file_is_understood(tmp_path, monkeypatch):
    monkeypatch.delenv("NECROPOOL_HOME", raising=False)
    path = write(tmp_path / "c.toml", f"""\
root = "{tmp_path / 'r'}"
max_allocation_hours = 8
stale_lock_hours = 1.5
lock_timeout = 5
git_timeout = 120

[pools.web]
url = "https://example.com/web.git"
num_slots = 4
branch = "develop"
keep_ignored = true
fetch_on_allocate = false

[pools."api.v2"]
url = "git@example.com:api.git"
""")
    settings = load_settings(config=str(path))
    assert settings.root == tmp_path / "r"
    assert settings.config_path == path
    assert (settings.max_allocation_hours, settings.stale_lock_hours) == (8, 1.5)
    assert (settings.lock_timeout, settings.git_timeout) == (5, 120)
    web = settings.pools["web"]
    assert (web.url, web.num_slots, web.branch) == ("https://example.com/web.git", 4, "develop")
    assert web.keep_ignored is True and web.fetch_on_allocate is False
    api = settings.pools["api.v2"]
    assert api.num_slots == 3 and api.branch is None and api.keep_ignored is False


# --- an invalid config file: exit 2, and the message names the file, the key and the reason ----

POOL = '[pools.web]\nurl = "https://example.com/r.git"\n'

INVALID = [
    # (file text, key the message must name, words of the reason)
    ("root = \n", None, "TOML"),
    ("[pools.web\nurl = 'x'\n", None, "TOML"),
    ("colour = true\n", "colour", "unknown key"),
    (POOL + "slots = 3\n", "pools.web.slots", "unknown key"),
    (POOL + 'num_slots = "3"\n', "pools.web.num_slots", "integer"),
    (POOL + "num_slots = 2.5\n", "pools.web.num_slots", "integer"),
    (POOL + "num_slots = true\n", "pools.web.num_slots", "boolean"),
    (POOL + 'keep_ignored = "yes"\n', "pools.web.keep_ignored", "boolean"),
    (POOL + "branch = 7\n", "pools.web.branch", "string"),
    (POOL + "num_slots = 0\n", "pools.web.num_slots", "greater than zero"),
    (POOL + "num_slots = -2\n", "pools.web.num_slots", "greater than zero"),
    (POOL + 'fetch_backend = "svn"\n', "pools.web.fetch_backend", "must be one of"),
    ('lock_timeout = "30s"\n', "lock_timeout", "number"),
    ("lock_timeout = 0\n", "lock_timeout", "greater than zero"),
    ("git_timeout = -1\n", "git_timeout", "greater than zero"),
    ("max_allocation_hours = 0.0\n", "max_allocation_hours", "greater than zero"),
    ("stale_lock_hours = -0.5\n", "stale_lock_hours", "greater than zero"),
    ("lock_timeout = nan\n", "lock_timeout", "number"),
    ("root = 5\n", "root", "string"),
    ("pools = 3\n", "pools", "table"),
    ("[pools]\nweb = 3\n", "pools.web", "table"),
    ("[pools.web]\nnum_slots = 2\n", "pools.web.url", "missing"),
    ('[pools.Web]\nurl = "https://example.com/r.git"\n', "pools.Web", "invalid pool name"),
    ('[pools."../up"]\nurl = "https://example.com/r.git"\n', "pools.../up", "invalid pool name"),
    ('[pools.web]\nurl = "ext::sh -c id"\n', "pools.web.url", "not allowed"),
    ('[pools.web]\nurl = "-oProxyCommand=id"\n', "pools.web.url", "must not start with '-'"),
    ('[pools.web]\nurl = ""\n', "pools.web.url", "empty"),
]


@pytest.mark.parametrize(("text", "key", "reason"), INVALID,
                         ids=[f"{i}-{k or 'toml'}" for i, (_, k, _r) in enumerate(INVALID)])
def test_invalid_config_is_a_usage_error_naming_file_key_reason(root, tmp_path, text, key,
                                                                 reason):
    path = write(tmp_path / "bad.toml", text)
    plain = run_cli("--config", path, "list")
    assert plain.code == 2, plain
    assert plain.stdout == ""
    lines = plain.stderr.splitlines()
    assert len(lines) == 1, plain.stderr
    assert str(path) in lines[0]
    if key:
        assert f"{key}:" in lines[0]
    assert reason in lines[0]
    assert "Traceback" not in plain.stderr

    as_json = run_cli("--config", path, "list", "--json")
    assert as_json.code == 2
    assert as_json.stdout == ""
    error = json.loads(as_json.stderr)
    assert error == {"schema_version": 1, "type": "error", "code": "usage",
                     "message": error["message"], "exit_code": 2}
    assert str(path) in error["message"] and reason in error["message"]


def test_invalid_config_blocks_every_command(root, pool, tmp_path, upstream):
    """An invalid config is never half-applied: even commands that would not use the bad
    key refuse to run, and nothing is created."""
    path = write(tmp_path / "bad.toml", "lock_timeout = 0\n")
    for args in (["status", "web"], ["create", "api", upstream, "--slots", "1"], ["add", "web"],
                 ["sync"]):
        result = run_cli("--config", path, *args)
        assert result.code == 2, (args, result)
    assert sorted(p.name for p in (root / "pools").iterdir()) == ["web"]
    assert len(list((root / "pools/web/slots").iterdir())) == 3


def test_config_that_is_a_directory_is_an_error(root, tmp_path):
    result = run_cli("--config", tmp_path, "list")
    assert result.code == 2, result
    assert str(tmp_path) in result.stderr
