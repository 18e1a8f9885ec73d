"""Man pages: the committed pages are what the generator writes, they are valid roff
(mandoc and groff find nothing), ``man -l`` renders them, and the hand-written parts agree
with the code (files, config keys, error codes, the options used in examples).

Regenerate with ``python -m tools.manpage man``.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from necropool.cli.registry import EXAMPLES
from tools import manpage

REPO = Path(__file__).resolve().parent.parent
MAN = REPO / "man"
REGENERATE = "python -m tools.manpage man"


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """The pages written by the documented command into a fresh directory."""
    out = tmp_path_factory.mktemp("man")
    proc = subprocess.run([sys.executable, "-m", "tools.manpage", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return out


def _roff(text: str) -> str:
    return text.replace("-", "\\-")


def _pages(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.1"))


def test_committed_pages_are_current(generated):
    assert _pages(MAN) == _pages(generated), f"man/ is stale: run {REGENERATE}"
    for name in _pages(generated):
        assert (MAN / name).read_text() == (generated / name).read_text(), (
            f"man/{name} is stale: run {REGENERATE}")


def test_generation_is_deterministic(generated):
    assert manpage.pages() == {n: (generated / n).read_text() for n in _pages(generated)}
    assert f'"{manpage.DATE}"' in (generated / "necropool.1").read_text().splitlines()[0]


def test_every_command_has_a_page_with_its_options():
    from typer.main import get_command

    from necropool.cli.app import build

    root = get_command(build())
    ctx = manpage._context(root, "necropool")
    names = manpage.command_names()
    assert {"allocate", "release", "run", "auto-recover", "completion"} <= set(names)
    main = (MAN / "necropool.1").read_text()
    for name in names:
        page = (MAN / f"necropool-{name}.1").read_text()
        assert f"\\fB{_roff('necropool-' + name)}\\fR(1)" in main
        command = root.get_command(ctx, name)
        sub_ctx = manpage._context(command, name, ctx)
        # a command with subcommands (rescued) documents theirs on its page
        subs = [command] + [command.get_command(sub_ctx, n)
                            for n in getattr(command, "list_commands", lambda c: [])(sub_ctx)]
        for each in subs:
            for param in each.get_params(sub_ctx):
                for opt in getattr(param, "opts", []):
                    if opt.startswith("-"):
                        assert f"\\fB{_roff(opt)}\\fR" in page, (name, opt)


def test_main_page_has_the_hand_written_sections():
    text = (MAN / "necropool.1").read_text()
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "GLOBAL OPTIONS", "COMMANDS",
                    "EXIT STATUS", "ENVIRONMENT", "FILES", "JSON OUTPUT", "EXAMPLES",
                    "SEE ALSO"):
        assert f"\n.SH {section}\n" in text, section
    for var in ("NECROPOOL_HOME", "NECROPOOL_CONFIG", "XDG_DATA_HOME", "XDG_CONFIG_HOME",
                "NO_COLOR", "NECROPOOL_SLOT_ID", "NECROPOOL_SLOT_PATH", "NECROPOOL_LEASE_ID"):
        assert f"\n.B {var}\n" in text, var
    for code in ("0", "1", "2", "3", "4", "5", "70", "75", "130"):
        assert f"\n.B {code}\n" in text, code
    roff = {
        "cron": "* * * * * necropool auto\\-recover \\-\\-json >>/var/log/necropool.json",
        "ci": "necropool run web \\-\\- make test",
        "jq": "necropool status web \\-\\-json | jq \\-r '.slots[] | "
              "select(.state==\"allocated\") | .slot_id'",
    }
    for what, line in roff.items():
        assert line in text, what
    for key in ("schema_version", "long_allocated_slots", "corrupted_slots", "orphaned_locks",
                "long_allocated_released", "corrupted_recovered", "corrupted_isolated",
                "orphaned_locks_cleaned", "errors", "exit_code"):
        assert key in text, key


def test_hyphens_are_escaped():
    """Every hyphen in text is ``\\-`` (a minus: copy-pasteable options)."""
    for path in MAN.glob("*.1"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.startswith(".TH "):
                line = line.replace(f'"{manpage.DATE}"', "")
            assert not re.search(r"(?<!\\)-", line), f"{path.name}:{number}: {line}"


def test_hand_written_parts_agree_with_the_code():
    from necropool.ground import config, errors
    from necropool.ground.layout import PoolPaths

    named = set()
    for path, _ in manpage.FILES:
        if path.startswith("<root>/pools/<pool>/") and path != "<root>/pools/<pool>/":
            first = path.removeprefix("<root>/pools/<pool>/").split("/")[0]
            assert first in PoolPaths.KNOWN, path
            named.add(first)
    assert named == PoolPaths.KNOWN, "every file of a pool is documented"
    documented = {k for k, _ in manpage.CONFIG_TOP} | {k for k, _ in manpage.CONFIG_POOL}
    assert documented == (set(config.TOP_KEYS) - {"pools"}) | set(config.POOL_KEYS)
    classes = [c for c in vars(errors).values()
               if isinstance(c, type) and issubclass(c, errors.NecropoolError)]
    codes = {str(code) for code, _ in manpage.EXIT_STATUS}
    for cls in classes:
        assert str(cls.exit_code) in codes, cls
        assert f"{cls.code} ({cls.exit_code})" in manpage.JSON_CODES, cls


def test_examples_use_real_commands_and_options():
    from typer.main import get_command

    from necropool.cli import registry
    from necropool.cli.app import build

    root = get_command(build())
    ctx = manpage._context(root, "necropool")
    global_opts = {o for p in root.get_params(ctx) for o in getattr(p, "opts", [])}
    texts = [example for _, example in manpage.EXAMPLES]
    texts += list(EXAMPLES.values())
    texts += [t for notes in registry.NOTES.values() for t in notes]
    checked = 0
    for text in texts:
        for match in re.finditer(r"necropool ([a-z-]+)([^|\n]*)", text):
            name, rest = match.groups()
            command = root.get_command(ctx, name)
            if command is None:  # prose such as "necropool's", or a page name
                continue
            sub_ctx = manpage._context(command, name, ctx)
            if hasattr(command, "get_command") and rest.split():  # rescued list ...
                name, rest = rest.split()[0], rest.split(None, 1)[1:]
                rest = rest[0] if rest else ""
                command = command.get_command(sub_ctx, name)
                sub_ctx = manpage._context(command, name, sub_ctx)
            known = global_opts | {o for p in command.get_params(sub_ctx)
                                   for o in getattr(p, "opts", [])}
            rest = rest.split(" -- ")[0].split("$(")[0].split(")")[0]
            for opt in re.findall(r"(?<![\w-])--[a-z][a-z-]*", rest):
                assert opt in known, (name, opt, text)
                checked += 1
    assert checked >= 10


def _run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, **kwargs)


@pytest.mark.parametrize("page", _pages(MAN))
def test_mandoc_lint(page):
    if shutil.which("mandoc") is None:
        pytest.skip("mandoc is not installed")
    proc = _run(["mandoc", "-T", "lint", str(MAN / page)])
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, ""), proc.stdout + proc.stderr


@pytest.mark.parametrize("page", _pages(MAN))
def test_groff_finds_nothing(page):
    if shutil.which("groff") is None:
        pytest.skip("groff is not installed")
    proc = _run(["groff", "-ww", "-man", "-Tutf8", "-z", str(MAN / page)])
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, ""), proc.stderr


def test_man_renders_the_main_page():
    if shutil.which("man") is None:
        pytest.skip("man is not installed")
    env = dict(os.environ, MANPAGER="cat", PAGER="cat", MANWIDTH="100", LC_ALL="C.UTF-8")
    proc = _run(["man", "-l", str(MAN / "necropool.1")], env=env)
    assert proc.returncode == 0, proc.stderr
    text = re.sub(r".\x08", "", proc.stdout)  # no overstriking, should there be any
    assert text.startswith("NECROPOOL(1)")
    for expected in ("EXIT STATUS", "NECROPOOL_LEASE_ID", "necropool run web -- make test",
                     "* * * * * necropool auto-recover --json >>/var/log/necropool.json",
                     "necropool-auto-recover(1)"):
        assert expected in text, expected
    proc = _run(["man", "-l", str(MAN / "necropool-release.1")], env=env)
    assert proc.returncode == 0 and "--lease-id LEASE-ID" in re.sub(r".\x08", "", proc.stdout)
