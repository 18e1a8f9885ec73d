"""Shared fixtures: real git repositories in temp dirs, a private root, a CLI runner
(helpers.run_cli) that starts ``python -m necropool`` as a real process, and a throw-away
PostgreSQL server (tests/pgcluster.py)."""

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import git, run_cli, skip_unless_ci
from pgcluster import Cluster, ClusterError

from necropool.ground.config import PoolSpec, load_settings
from necropool.manager.facade import PoolManager


def pytest_sessionstart(session) -> None:
    """The tests start thousands of ``python -m necropool`` processes: the package's bytecode
    is compiled once here, so that none compiles it again where PYTHONDONTWRITEBYTECODE is
    set, as on CI images (60-100 ms a process; tests/test_lifecycle.py ran 74 s -> 58 s)."""
    import compileall

    import necropool

    compileall.compile_dir(Path(necropool.__file__).parent, quiet=2)
    # The clock's test hook (NECROPOOL_CLOCK_OFFSET) works only where this switch is set:
    # here, for the suite and every process it starts; never in production.
    os.environ["NECROPOOL_TEST_HOOKS"] = "1"


@pytest.fixture
def upstream(tmp_path) -> Path:
    """A small non-bare repository on branch main with a .gitignore and nested files."""
    repo = tmp_path / "upstream"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    for i in range(20):
        (repo / "src" / f"pkg{i % 4}").mkdir(parents=True, exist_ok=True)
        (repo / "src" / f"pkg{i % 4}" / f"mod{i}.py").write_text(f"value = {i}\n")
    (repo / "README").write_text("upstream\n")
    (repo / ".gitignore").write_text("build/\n*.o\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "initial")
    return repo


@pytest.fixture
def root(tmp_path, monkeypatch) -> Path:
    """A private necropool root; NECROPOOL_HOME points at it for this test and its children."""
    path = tmp_path / "root"
    monkeypatch.setenv("NECROPOOL_HOME", str(path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.delenv("NECROPOOL_CONFIG", raising=False)
    return path


@pytest.fixture
def manager(root) -> PoolManager:
    return PoolManager(load_settings())


@pytest.fixture
def pool(manager, upstream) -> str:
    """A 3-slot pool named 'web' over ``upstream``."""
    manager.create_pool(PoolSpec(name="web", url=str(upstream), num_slots=3))
    return "web"


@pytest.fixture
def cli(root):
    return run_cli


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """One PostgreSQL server for the session, started when a test first asks for it. Where none
    can start the test is skipped with the cause (a failure when CI is set)."""
    try:
        cluster = Cluster().start()
    except ClusterError as exc:
        skip_unless_ci(f"no PostgreSQL server: {exc}")
    with cluster:
        yield cluster


_databases = itertools.count(1)


@pytest.fixture
def pg_dsn(pg_cluster: Cluster) -> Iterator[str]:
    """A DSN to a fresh empty database of ``pg_cluster``, dropped after the test."""
    name = f"test_{next(_databases)}"
    yield pg_cluster.create_database(name)
    pg_cluster.drop_database(name)


@pytest.fixture(scope="session")
def ledger_template(pg_cluster: Cluster) -> str:
    """A database with necropool's schema, which each test's ledger is a copy of."""
    from necropool.store.pg import schema as ledger
    from necropool.store.pg.connect import disconnect

    ledger.migrate(pg_cluster.create_database("necropool_template"))
    disconnect()  # a template must have no session open
    return "necropool_template"


@pytest.fixture
def ledger_dsn(pg_cluster: Cluster, ledger_template: str) -> Iterator[str]:
    """A fresh ledger (schema made) for this test, dropped after it."""
    from necropool.store.pg.connect import disconnect

    name = f"ledger_{next(_databases)}"
    yield pg_cluster.create_database(name, template=ledger_template)
    disconnect()
    pg_cluster.drop_database(name)


def pytest_collection_modifyitems(config, items):
    """Tests run on both backends (fixtures ``ledger``, ``template``: "local" or "ledger")
    unless marked ``toml_only`` (about the TOML store's own files) or ``ledger_only``."""
    def wanted(item) -> bool:
        params = getattr(item, "callspec", None)
        backends = {v for v in params.params.values() if v in ("local", "ledger")} \
            if params else set()
        if item.get_closest_marker("toml_only") and "ledger" in backends:
            return False
        return not (item.get_closest_marker("ledger_only") and "local" in backends)

    items[:] = [i for i in items if wanted(i)]


@pytest.fixture(params=["local", "ledger"])
def ledger(request, root, monkeypatch) -> str | None:
    """Run the test on both backends: pool state in local TOML files, then in a PostgreSQL
    ledger (``NECROPOOL_LEDGER``, for the test and the processes it starts)."""
    if request.param == "local":
        return None
    dsn = request.getfixturevalue("ledger_dsn")
    monkeypatch.setenv("NECROPOOL_LEDGER", dsn)
    return dsn
