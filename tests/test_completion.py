"""Shell completion: the committed scripts are what ``necropool completion SHELL`` prints, the
completion protocol answers, and each script loaded in a real bash, zsh and fish completes
``necropool al<TAB>`` to ``allocate`` and ``necropool release <TAB>`` to exactly the
allocated slots.

bash and zsh run interactively in a pseudo-terminal and get a real <TAB>; what their line
editor was offered is captured at the lowest level (bash: COMPREPLY of the registered
function; zsh: the compadd builtin). fish answers ``complete -C``. Regenerate the scripts
with ``python -m necropool.cli.completion_scripts completions``.
"""

import fcntl
import os
import re
import select
import shlex
import shutil
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from helpers import run_cli

from necropool.cli.completion_scripts import FILES

REPO = Path(__file__).resolve().parent.parent
COMPLETIONS = REPO / "completions"
BASH_COMPLETION = Path("/usr/share/bash-completion/bash_completion")
REGENERATE = "python -m necropool.cli.completion_scripts completions"


# ---- the scripts -------------------------------------------------------------------------

@pytest.mark.parametrize("shell", sorted(FILES))
def test_committed_script_is_what_the_command_prints(shell):
    printed = run_cli("completion", shell)
    assert printed.code == 0, printed
    committed = (COMPLETIONS / FILES[shell]).read_text()
    assert printed.stdout == committed, f"completions/{FILES[shell]} is stale: run {REGENERATE}"


def test_regenerating_writes_the_committed_files(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "necropool.cli.completion_scripts", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for name in FILES.values():
        assert (tmp_path / name).read_text() == (COMPLETIONS / name).read_text(), name


def test_unknown_shell_is_a_usage_error():
    result = run_cli("completion", "tcsh")
    assert result.code == 2, result
    assert "tcsh" in result.stderr


def test_completion_code_stays_off_the_normal_command_path(root):
    code = ("import sys\n"
            "from necropool.cli import main\n"
            "try:\n    main(['list'])\nexcept SystemExit:\n    pass\n"
            "print('MODULES', *sorted(m for m in sys.modules if m.startswith('necropool.cli')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    modules = proc.stdout.rsplit("MODULES", 1)[-1].split()
    assert "necropool.cli.app" in modules, proc
    assert "necropool.cli.completion_scripts" not in modules


# ---- the protocol, without a shell --------------------------------------------------------

def ask(instruction: str, words: str, cword: str, **env) -> subprocess.CompletedProcess:
    """What a completion script asks: ``_NECROPOOL_COMPLETE`` + COMP_WORDS + COMP_CWORD."""
    full = dict(os.environ, _NECROPOOL_COMPLETE=instruction, COMP_WORDS=words,
                COMP_CWORD=cword, **env)
    return subprocess.run([sys.executable, "-m", "necropool"], env=full, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)


def values(proc: subprocess.CompletedProcess) -> list[str]:
    return sorted(line.split("\t")[0] for line in proc.stdout.splitlines() if line)


OWNER = "np-tester"


@pytest.fixture
def allocated(manager, pool) -> list[str]:
    """Two of the three slots of pool 'web' allocated; their ids."""
    for _ in range(2):
        manager.allocate_slot(pool, owner=OWNER, fetch=False)
    ids = sorted(s["slot_id"] for s in manager.pool_status(pool)["slots"]
                 if s["state"] == "allocated")
    assert len(ids) == 2
    return ids


def test_protocol_answers_commands_and_allocated_slots(allocated):
    al = ask("bash_complete", "necropool al", "1")
    assert (al.returncode, al.stdout, al.stderr) == (0, "allocate\n", "")
    release = ask("bash_complete", "necropool release ", "2")
    assert release.returncode == 0 and release.stderr == ""
    assert values(release) == allocated
    assert values(ask("bash_complete", "necropool remove web-", "2")) == [
        "web-1", "web-2", "web-3"]
    assert values(ask("bash_complete", "necropool allocate ", "2")) == ["web"]


def test_protocol_for_zsh_and_fish_carries_help(allocated):
    zsh = ask("zsh_complete", "necropool rel", "1")
    assert zsh.stdout.startswith("release\tRelease a slot")
    options = ask("zsh_complete", "necropool release --", "2")
    assert "--lease-id\tRefuse unless this is the current lease" in options.stdout.splitlines()
    # fish passes the line up to the cursor and the word under the cursor
    fish = ask("fish_complete", "necropool release ", "")
    assert values(fish) == allocated
    assert values(ask("fish_complete", "necropool al", "al")) == ["allocate"]


def test_root_flag_on_the_line_is_honoured(allocated, tmp_path):
    other = ask("bash_complete", f"necropool --root {tmp_path / 'elsewhere'} release ", "4")
    assert (other.returncode, other.stdout) == (0, "")
    same = ask("bash_complete", f"necropool --root {os.environ['NECROPOOL_HOME']} release ", "4",
               NECROPOOL_HOME=str(tmp_path / "elsewhere"))
    assert values(same) == allocated


def test_completion_never_fails_loudly(allocated, root):
    (root / "pools" / "web" / "state.toml").write_text("this is [not toml")
    (root / "pools" / "web" / "state" / "1.toml").write_text("this is [not toml")
    for words, cword in [("necropool release ", "2"), ("necropool al", "x"),
                         ('necropool "unterminated', "1"), ("necropool --version ", "2"),
                         ("necropool --config /nonexistent/config.toml release ", "4"),
                         ("", "")]:
        proc = ask("bash_complete", words, cword)
        assert proc.returncode == 0, (words, proc)
        assert proc.stderr == "" and "Traceback" not in proc.stdout, (words, proc)
        assert "necropool 0.1" not in proc.stdout  # --version's callback is kept quiet
    for instruction in ("bogus", "bash_bogus", "tcsh_complete"):
        proc = ask(instruction, "necropool ", "1")
        assert (proc.returncode, proc.stdout, proc.stderr) == (1, "", "")


# ---- real shells --------------------------------------------------------------------------

LINES = ["necropool al", "necropool release ", "necropool allocate w"]


def _need(shell: str) -> str:
    path = shutil.which(shell)
    if path is None:
        pytest.skip(f"{shell} is not installed")
    return path


def _shell_env(tmp_path: Path) -> dict:
    """PATH with a ``necropool`` that runs this interpreter; a private HOME; no user rc."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "necropool"
    wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m necropool "$@"\n')
    wrapper.chmod(0o755)
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("BASH_ENV", "ENV", "ZDOTDIR", "PROMPT_COMMAND", "HISTFILE",
                        "XDG_DATA_HOME", "XDG_DATA_DIRS", "_NECROPOOL_COMPLETE")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
               HOME=str(home), TERM="xterm", LC_ALL="C.UTF-8", NP_CAPTURE=str(tmp_path / "cap"))
    return env


def _set_controlling_tty():
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """An interactive shell on a pseudo-terminal."""

    def __init__(self, argv: list[str], env: dict, cwd: Path):
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 250, 0, 0))
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                                     cwd=cwd, start_new_session=True,
                                     preexec_fn=_set_controlling_tty)
        os.close(slave)
        self.seen = b""
        self.pending = b""

    def expect(self, token: bytes, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while token not in self.pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"no {token!r} from the shell; it showed: {self.seen[-3000:]!r}")
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    data = os.read(self.master, 65536)
                except OSError:
                    data = b""
                if not data:
                    raise AssertionError(f"the shell exited; it showed: {self.seen[-3000:]!r}")
                self.seen += data
                self.pending += data
        self.pending = self.pending[self.pending.index(token) + len(token):]

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        os.close(self.master)


PROMPT = b"np-ready> "


def _tab_complete(argv: list[str], env: dict, cwd: Path,
                  lines: list[str] = LINES) -> tuple[list[list[str]], str]:
    """Type each of ``lines`` and <TAB> in an interactive shell; what was offered for each,
    and what the terminal showed."""
    capture = Path(env["NP_CAPTURE"])
    term = Terminal(argv, env, cwd)
    results = []
    try:
        term.expect(PROMPT)
        for line in lines:
            capture.unlink(missing_ok=True)
            term.send(line.encode() + b"\t")
            # after the completion, ^U empties the line and a marker command runs; the line
            # editor handles keys in order, so the marker proves the completion has finished
            term.send(b"\x15echo NP$((6*7))DONE\r")
            term.expect(b"NP42DONE")
            term.expect(PROMPT)
            offered = capture.read_text().split("\n") if capture.exists() else None
            assert offered is not None, f"no completion ran for {line!r}: {term.seen[-3000:]!r}"
            results.append(sorted(v for v in offered if v))
        term.send(b"exit\r")
    finally:
        term.close()
    return results, term.seen.decode(errors="replace")


BASH_CAPTURE = r"""
__np_capture() {
    "$__np_fn" "$@"
    local status=$?
    printf '%s\n' "${COMPREPLY[@]}" >> "$NP_CAPTURE"
    return $status
}
# Whoever registers the completion of necropool (the script, at once or when
# bash-completion loads it on the first <TAB>), its function gets wrapped by the capture.
complete() {
    builtin complete "$@" || return
    local spec
    spec=$(builtin complete -p necropool 2>/dev/null) || return 0
    [[ $spec == *" -F __np_capture "* ]] && return 0
    __np_fn=${spec##*-F }
    __np_fn=${__np_fn%% *}
    eval "builtin ${spec/-F $__np_fn /-F __np_capture }"
}
"""

ZSH_CAPTURE = r"""
compadd() {
    if [[ ${@[1,(i)(-|--)]} == *-(O|A|D)\ * ]]; then
        builtin compadd "$@"
        return
    fi
    local -a __np_hits
    builtin compadd -A __np_hits "$@"
    (( ${#__np_hits} )) && print -rl -- $__np_hits >> $NP_CAPTURE
    # the display strings (value and description) _describe hands over with -d ARRAY
    local __np_i
    for (( __np_i = 1; __np_i < $#; __np_i++ )); do
        [[ ${@[__np_i]} == -d ]] && print -rl -- ${(P)${@[__np_i+1]}} >> $NP_CAPTURE.shown
    done
    builtin compadd "$@"
}
"""


@pytest.fixture
def expected(allocated) -> list[list[str]]:
    return [["allocate"], allocated, ["web"]]


def _bash(mode: str, tmp_path: Path, lines: list[str] = LINES):
    bash = _need("bash")
    env = _shell_env(tmp_path)
    script = COMPLETIONS / FILES["bash"]
    rc = ["PS1='np-ready> '", "HISTFILE=/dev/null"]
    if mode == "bash-completion":
        if not BASH_COMPLETION.exists():
            pytest.skip("bash-completion is not installed")
        # the install location the script's header gives, loaded on the first <TAB>
        target = Path(env["HOME"]) / ".local/share/bash-completion/completions/necropool"
        target.parent.mkdir(parents=True)
        shutil.copy(script, target)
        rc += [f"source {shlex.quote(str(BASH_COMPLETION))}", BASH_CAPTURE]
    else:
        rc += [BASH_CAPTURE, f"source {shlex.quote(str(script))}"]
    rcfile = tmp_path / "bashrc"
    rcfile.write_text("\n".join(rc) + "\n")
    argv = [bash, "--noprofile", "--rcfile", str(rcfile), "-i"]
    return _tab_complete(argv, env, tmp_path, lines)


def test_bash_completes_the_slots_of_a_root_given_with_equals(allocated, root, tmp_path):
    """bash splits ``--root=DIR`` at the ``=``: the slots of DIR are still what is offered
    (not command names), whatever NECROPOOL_HOME says."""
    bash = _need("bash")
    env = dict(_shell_env(tmp_path), NECROPOOL_HOME=str(tmp_path / "elsewhere"))
    rcfile = tmp_path / "bashrc"
    rcfile.write_text("\n".join(["PS1='np-ready> '", "HISTFILE=/dev/null", BASH_CAPTURE,
                                 f"source {shlex.quote(str(COMPLETIONS / FILES['bash']))}"]))
    argv = [bash, "--noprofile", "--rcfile", str(rcfile), "-i"]
    lines = [f"necropool --root={root} release ", f"necropool --root={root} rel"]
    assert _tab_complete(argv, env, tmp_path, lines)[0] == [allocated, ["release"]]
    assert values(ask("bash_complete", f"necropool --root = {root} release ", "5")) == allocated


@pytest.mark.parametrize("mode", ["source", "bash-completion"])
def test_bash(mode, expected, tmp_path):
    assert _bash(mode, tmp_path)[0] == expected


def _zsh(mode: str, tmp_path: Path, lines: list[str] = LINES):
    zsh = _need("zsh")
    env = _shell_env(tmp_path)
    zdotdir = tmp_path / "zdotdir"
    zdotdir.mkdir()
    functions = tmp_path / "functions"
    functions.mkdir()
    shutil.copy(COMPLETIONS / FILES["zsh"], functions / "_necropool")
    rc = ["PS1='np-ready> '", "unsetopt BEEP"]
    if mode == "fpath":  # installed as _necropool in $fpath, autoloaded on the first <TAB>
        rc.append(f"fpath=({shlex.quote(str(functions))} $fpath)")
    rc.append(f"autoload -Uz compinit && compinit -u -d {shlex.quote(str(tmp_path / 'zcd'))}")
    if mode == "source":
        rc.append(f"source {shlex.quote(str(COMPLETIONS / FILES['zsh']))}")
    rc.append(ZSH_CAPTURE)
    (zdotdir / ".zshrc").write_text("\n".join(rc) + "\n")
    env["ZDOTDIR"] = str(zdotdir)
    return _tab_complete([zsh, "--no-globalrcs", "-i"], env, tmp_path, lines)


@pytest.mark.parametrize("mode", ["fpath", "source"])
def test_zsh(mode, expected, tmp_path):
    offered, _ = _zsh(mode, tmp_path)
    assert offered == expected
    # the slot ids are shown with their state and owner
    shown = (tmp_path / "cap.shown").read_text().splitlines()
    # (zsh groups the ids that share a description under one "-- description" line)
    assert any(re.match(r"(web-1 +)?-- allocated,", line) for line in shown), shown


def _fish(mode: str, tmp_path: Path, lines: list[str] = LINES) -> list[list[str]]:
    """What ``complete -C`` offers for each line: [[value<TAB>description, ...], ...]."""
    fish = _need("fish")
    env = _shell_env(tmp_path)
    script = COMPLETIONS / FILES["fish"]
    if mode == "source":
        setup = f"source {shlex.quote(str(script))}"
    else:  # installed in a completions directory, loaded when necropool is first completed
        directory = tmp_path / "fish-completions"
        directory.mkdir()
        shutil.copy(script, directory / "necropool.fish")
        setup = f"set -p fish_complete_path {shlex.quote(str(directory))}"
    commands = [setup]
    for line in lines:
        commands += [f"complete -C {shlex.quote(line)}", "echo NP-NEXT"]
    proc = subprocess.run([fish, "--no-config", "-c", "; ".join(commands)], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0 and proc.stderr == "", proc
    chunks = proc.stdout.split("NP-NEXT\n")[:-1]
    return [sorted(line for line in chunk.splitlines() if line) for chunk in chunks]


@pytest.mark.parametrize("mode", ["source", "autoload"])
def test_fish(mode, expected, tmp_path):
    offered = _fish(mode, tmp_path)
    assert [[c.split("\t")[0] for c in each] for each in offered] == expected
    assert offered[1] == [f"{slot}\tallocated, {OWNER}" for slot in expected[1]]


# ---- values, status targets, and the command after run POOL -- ---------------------------

VALUE_LINES = ["necropool status --format t", "necropool --color n", "necropool completion f",
               "necropool create x y --fetch-backend l", "necropool run web -- np-stub-",
               "necropool status w", "necropool log --event clean"]


@pytest.fixture
def values_expected(allocated, tmp_path) -> list[list[str]]:
    """What VALUE_LINES complete to, with a program 'np-stub-tool' on PATH."""
    return [["table", "tsv"], ["never"], ["fish"], ["libgit2"], ["np-stub-tool"],
            ["web", "web-1", "web-2", "web-3"], ["cleanup"]]


def _stub_on_path(tmp_path: Path, env: dict | None = None) -> dict:
    stubs = tmp_path / "stubs"
    stubs.mkdir(exist_ok=True)
    tool = stubs / "np-stub-tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    env = env if env is not None else dict(os.environ)
    env["PATH"] = f"{stubs}{os.pathsep}{env.get('PATH', '')}"
    return env


def test_protocol_completes_values_targets_and_commands(values_expected, tmp_path):
    env = _stub_on_path(tmp_path, {})
    for line, want in zip(VALUE_LINES, values_expected, strict=True):
        words = line.split(" ")
        got = values(ask("bash_complete", line, str(len(words) - 1), PATH=env["PATH"]))
        assert got == want, line
    # after the command's name, its arguments are the shell's file names (no candidates)
    assert ask("bash_complete", "necropool run web -- np-stub-tool ", "4").stdout == ""
    described = ask("zsh_complete", "necropool status ", "2").stdout.splitlines()
    assert "web\tpool" in described and f"web-1\tallocated, {OWNER}" in described
    assert "web-3\tavailable" in described


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_values_in_real_shells(shell, values_expected, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", _stub_on_path(tmp_path)["PATH"])
    if shell == "fish":
        offered = [[c.split("\t")[0] for c in each]
                   for each in _fish("source", tmp_path, VALUE_LINES)]
    else:
        offered = (_bash if shell == "bash" else _zsh)("source", tmp_path, VALUE_LINES)[0]
    assert offered == values_expected
