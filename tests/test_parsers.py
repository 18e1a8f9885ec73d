"""In-process tests of the parsers cleanup trusts with a holder's bytes: ``git status``
porcelain, index entries and their flags, loose and packed refs, ref-name encoding."""

import hashlib
import os
import subprocess
from pathlib import Path

import pytest
from helpers import commit_file, git

from necropool.git import commands as necrogit
from necropool.slot.gitdir import checksum_ok, flagged_entries
from necropool.slot.nested import ref_part
from necropool.slot.saving import parse_status

OID = "1" * 40


def test_porcelain_status_counts_every_kind_of_record():
    out = b"\0".join([
        f"# branch.oid {OID}".encode(), b"# branch.head caf\xe9",
        b"1 .M N... 100644 100644 100644 " + OID.encode() + b" " + OID.encode() + b" a.txt",
        b"2 R. N... 100644 100644 100644 " + OID.encode() + b" " + OID.encode() + b" R100 new",
        b"old name with spaces",  # the rename's source: not a record of its own
        b"u UU N... 100644 100644 100644 100644 " + b" ".join([OID.encode()] * 3) + b" c",
        b"? untracked.txt", b"? dir/", b"",
    ])
    st = parse_status(out)
    assert (st.head, st.changed, st.untracked) == (OID, 3, 2)
    assert os.fsencode(st.branch) == b"caf\xe9"


def test_porcelain_status_of_a_new_repository_and_a_detached_head():
    st = parse_status(b"# branch.oid (initial)\0# branch.head (detached)\0")
    assert (st.head, st.branch, st.changed, st.untracked) == (None, None, 0, 0)


@pytest.fixture
def repo(tmp_path) -> Path:
    path = tmp_path / "r"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    for i in range(40):
        (path / "d" / f"e{i % 3}").mkdir(parents=True, exist_ok=True)
        (path / "d" / f"e{i % 3}" / f"{'long-' * (i % 7)}f{i}.txt").write_text(f"{i}\n")
    git(path, "add", ".")
    git(path, "commit", "-q", "-m", "files")
    return path


@pytest.mark.parametrize("version", [2, 3, 4])
def test_index_flags_are_found_in_every_index_version(repo, version):
    index = repo / ".git" / "index"
    assert flagged_entries(index.read_bytes()) == ([], [])
    names = git(repo, "ls-files").splitlines()
    git(repo, "update-index", "--assume-unchanged", names[3])
    if version > 2:  # skip-worktree and intent-to-add need extended flags (version 3+)
        git(repo, "update-index", "--skip-worktree", names[20])
        (repo / "new.txt").write_text("new\n")
        git(repo, "add", "-N", "new.txt")
    git(repo, "update-index", "--index-version", str(version))
    hidden, skipped = flagged_entries(index.read_bytes())
    assert [n.decode() for n in hidden] == [names[3]] + (["new.txt"] if version > 2 else [])
    assert [n.decode() for n in skipped] == ([names[20]] if version > 2 else [])


def test_a_truncated_or_foreign_index_is_refused(repo):
    data = (repo / ".git" / "index").read_bytes()
    with pytest.raises((ValueError, IndexError)):
        flagged_entries(data[:200])
    with pytest.raises(ValueError):
        flagged_entries(b"PACK" + data[4:])
    assert checksum_ok(data) and not checksum_ok(data[:-1] + bytes([data[-1] ^ 1]))
    body = data[:-20]
    assert checksum_ok(body + hashlib.sha256(body).digest(), 32)


def test_refs_are_read_loose_over_packed_with_peeled_tags_and_symbolic_refs(repo):
    first = git(repo, "rev-parse", "HEAD")
    git(repo, "tag", "-a", "-m", "annotated", "v1")
    git(repo, "branch", "side")
    git(repo, "pack-refs", "--all")
    second = commit_file(repo, "x.txt", "x\n")  # main moves on: a loose ref over the packed
    gitdir = repo / ".git"
    tag_object = git(repo, "rev-parse", "v1")
    assert necrogit.refs_under(gitdir, "refs/") == {
        "refs/heads/main": second, "refs/heads/side": first, "refs/tags/v1": tag_object}
    assert necrogit.read_ref(gitdir, "HEAD") == second  # symbolic, followed
    assert necrogit.read_ref(gitdir, "refs/tags/v1") == tag_object  # not its peeled line
    necrogit.delete_refs(gitdir, ["refs/tags/v1", "refs/heads/side"])
    assert set(necrogit.refs_under(gitdir, "refs/")) == {"refs/heads/main"}
    assert "^" not in (gitdir / "packed-refs").read_text()  # the peeled line went with it


SHA256 = "2" * 64
PACKED = (b"# pack-refs with: peeled fully-peeled sorted \n"
          + f"{OID} refs/heads/main\n".encode()
          + f"{SHA256} refs/tags/v1\n^{OID}\n".encode()  # an annotated tag, peeled
          + b"\n^" + OID.encode() + b"\n"  # a blank line, then a peeled line of no ref
          + b"garbage\n" + b"x y z\n" + b"# x refs/heads/comment\n"
          + f"{OID} refs/heads/crlf\r\n".encode()
          + OID.encode() + b" refs/heads/caf\xe9\xc2\xa0x\n"  # not UTF-8; a no-break space
          + f"{OID} refs/heads/last".encode())  # no final newline


def test_packed_refs_parse_into_refs_and_keep_every_byte():
    records = list(necrogit.parse_packed_refs(PACKED))
    assert b"".join(raw for _, _, raw in records) == PACKED
    refs = {name: oid for name, oid, _ in records if name is not None}
    assert refs == {"refs/heads/main": OID, "refs/tags/v1": SHA256,
                    "refs/heads/crlf": OID, "refs/heads/caf\udce9\u00a0x": OID,
                    "refs/heads/last": OID}
    [tag] = [raw for name, _, raw in records if name == "refs/tags/v1"]
    assert tag.endswith(f"^{OID}\n".encode())  # the peeled line goes with its tag
    assert [raw for name, _, raw in records if name is None] == [
        PACKED.split(b"\n")[0] + b"\n", b"\n", b"^" + OID.encode() + b"\n", b"garbage\n",
        b"x y z\n", b"# x refs/heads/comment\n"]
    assert list(necrogit.parse_packed_refs(b"")) == []


def test_packed_refs_are_read_and_deleted_by_the_same_rule(tmp_path):
    (tmp_path / "packed-refs").write_bytes(PACKED)
    assert necrogit.read_ref(tmp_path, "refs/tags/v1") == SHA256
    assert necrogit.read_ref(tmp_path, "refs/heads/crlf") == OID
    assert necrogit.read_ref(tmp_path, "refs/heads/comment") is None
    found = necrogit.refs_under(tmp_path, "refs/heads/")
    necrogit.delete_refs(tmp_path, list(found) + ["refs/tags/v1"])
    left = (tmp_path / "packed-refs").read_bytes()
    assert not list(necrogit.refs_under(tmp_path, "refs/"))
    assert left.startswith(b"# pack-refs with:") and b"garbage\nx y z\n" in left
    assert OID.encode() + b" " not in left and SHA256.encode() not in left


def test_ref_names_that_are_not_utf8_survive_a_round_trip(repo):
    sha = git(repo, "rev-parse", "HEAD")
    subprocess.run([b"git", b"update-ref", b"refs/heads/caf\xe9", sha.encode()], cwd=repo,
                   check=True)
    subprocess.run([b"git", b"pack-refs", b"--all"], cwd=repo, check=True)
    gitdir = repo / ".git"
    [name] = [n for n in necrogit.refs_under(gitdir, "refs/heads/") if n != "refs/heads/main"]
    assert os.fsencode(name) == b"refs/heads/caf\xe9"
    necrogit.delete_refs(gitdir, [name])
    assert list(necrogit.refs_under(gitdir, "refs/heads/")) == ["refs/heads/main"]


@pytest.mark.parametrize("path", ["a/b", ".hidden/x", "a b/c~d", "x.lock", "x.lock/y", "a..b",
                                  "dir/.git", "é/ü", "v1.2/a.", "@{x}", "a:b?c*[d]\\e",
                                  "caf\udce9"])
def test_any_path_encodes_to_a_valid_ref_name(path):
    encoded = ref_part(path)
    ok = subprocess.run(["git", "check-ref-format", f"refs/x/{encoded}/HEAD"])
    assert ok.returncode == 0, encoded
    assert encoded.count("/") == path.count("/")
