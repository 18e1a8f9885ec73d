"""End to end: create a pool, allocate, dirty the slot, release, and find it fresh."""

from helpers import commit_file, git


def test_allocate_release_cycle_cleans_and_moves_to_new_tip(cli, upstream):
    created = cli("create", "web", upstream, "--slots", "2")
    assert created.code == 0, created
    path = cli("allocate", "web").stdout.strip()
    assert path.endswith("/pools/web/slots/1")
    (upstream / "later.txt").write_text("x")
    tip = commit_file(upstream, "later.txt", "new upstream work\n")
    with open(f"{path}/README", "a") as fh:
        fh.write("edited\n")
    released = cli("release", path, "--json")
    assert released.code == 0, released
    assert git(path, "rev-parse", "HEAD") == tip
    assert git(path, "status", "--porcelain", "--ignored") == ""
