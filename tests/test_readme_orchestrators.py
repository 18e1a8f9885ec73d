"""README.md's "For agent orchestrators" recipes, run as they are written (``sh``, with
``jq``) against a real pool."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import commit_file, git

import necropool

README = (Path(__file__).parent.parent / "README.md").read_text()


def recipes() -> list[str]:
    section = README.split("\n## For agent orchestrators\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, re.S)


def sh(script: str, cwd: Path) -> subprocess.CompletedProcess:
    """``script`` run by sh in ``cwd``, a ``necropool`` of this checkout first on PATH."""
    bin_dir = cwd / "bin"
    bin_dir.mkdir(exist_ok=True)
    shim = bin_dir / "necropool"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m necropool "$@"\n')
    shim.chmod(0o755)
    checkout = Path(necropool.__file__).parent.parent  # (PYTHONPATH may be relative)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=str(checkout))
    return subprocess.run(["sh", "-ec", script], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env=env)


@pytest.fixture(autouse=True)
def needs_jq():
    if shutil.which("jq") is None:
        pytest.skip("jq is not installed")


@pytest.mark.slow
def test_an_agent_gets_a_slot_with_dependencies_and_local_config(root, upstream, tmp_path,
                                                                  monkeypatch):
    section = README.split("\n## For agent orchestrators\n", 1)[1].split("\n## ", 1)[0]
    config = re.findall(r"```toml\n(.*?)```", section, re.S)[0]
    local = tmp_path / "agents"
    local.mkdir()
    (local / ".env").write_text("API_URL=http://127.0.0.1:9\n")
    (tmp_path / "config.toml").write_text(
        config.replace("https://example.com/org/web.git", str(upstream))
        .replace("/srv/agents/web", str(local)))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "npm").write_text("#!/bin/sh\nmkdir -p node_modules/left-pad\n")
    (bin_dir / "npm").chmod(0o755)
    commit_file(upstream, ".gitignore", "node_modules/\n")
    monkeypatch.setenv("NECROPOOL_CONFIG", str(tmp_path / "config.toml"))
    done = sh(recipes()[0], tmp_path)
    assert done.returncode == 0, done
    assert "agent-8 talks to http://127.0.0.1:9" in done.stdout


def test_an_agent_runs_while_the_orchestrator_watches_the_events(cli, pool, tmp_path):
    _, watch_and_run, _, _ = recipes()
    done = sh(watch_and_run + "sleep 1.5\nkill $!\n", tmp_path)
    assert done.returncode == 0, done
    slot = done.stdout.split("agent-7 works in ", 1)[1].split()[0]
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    mine = [(e["event"], e["owner"]) for e in events if e.get("slot_id") == slot]
    assert mine[-2:] == [("allocate", "agent-7"), ("release", "agent-7")], events


def test_a_crashed_agents_work_is_put_back_as_it_was(cli, pool, manager, tmp_path):
    held = manager.allocate_slot("web", owner="agent-7", fetch=False)
    work = Path(held["path"])
    git(work, "switch", "-q", "-c", "task-1234")
    (work / "README").write_text("staged\n")
    git(work, "add", "README")
    (work / "src/pkg1/mod1.py").write_text("unstaged\n")
    (work / "notes.txt").write_text("untracked\n")
    before = git(work, "status", "--short")
    manager.release_slot(held["slot_id"], fetch=False)  # as auto-recover reclaims it

    *_, resume = recipes()
    done = sh(resume, tmp_path)
    assert done.returncode == 0, done
    path, status = done.stdout.rstrip("\n").split("\n", 1)
    assert path == str(tmp_path / "resume") and status == before
    assert git(tmp_path / "resume", "branch", "--show-current") == "task-1234"


def test_an_agent_on_a_pull_request_gets_its_commit_and_ports(cli, upstream, tmp_path):
    git(upstream, "checkout", "-q", "-b", "topic")
    (upstream / "feature.txt").write_text("a pull request\n")
    git(upstream, "add", "feature.txt")
    git(upstream, "commit", "-q", "-m", "pull request")
    pr = git(upstream, "rev-parse", "--short", "HEAD")
    git(upstream, "update-ref", "refs/pull/123/head", "HEAD")
    git(upstream, "checkout", "-q", "main")
    git(upstream, "branch", "-q", "-D", "topic")
    _, _, on_a_pull_request, _ = recipes()
    done = sh(on_a_pull_request.replace("https://example.com/org/web.git", str(upstream)),
              tmp_path)
    assert done.returncode == 0, done
    assert done.stdout.splitlines()[-1] == \
        f"agent-8 at {pr}, slot 1, ports 20000 20001 20002 20003"
    slots = cli("status", "agents", "--json").json()["slots"]
    tip = git(upstream, "rev-parse", "main")
    assert all(s["state"] == "available" and s["current_commit"] == tip for s in slots)
