"""The code version recorded on runs and stages: a git checkout's commit and whether tracked files changed."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from semiface.code_version import COMMIT_ENV, code_version, version_tag


def git(root, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_a_checkout_gives_its_commit_and_whether_a_tracked_file_changed(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(COMMIT_ENV, raising=False)
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "module.py").write_text("x = 1\n")
    git(repo, "add", "module.py")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "first")
    commit = git(repo, "rev-parse", "HEAD")

    assert code_version(repo) == {"commit": commit, "dirty": False}
    (repo / "notes.txt").write_text("untracked files do not count\n")
    assert code_version(repo) == {"commit": commit, "dirty": False}
    (repo / "module.py").write_text("x = 2\n")
    assert code_version(repo) == {"commit": commit, "dirty": True}
    assert version_tag(code_version(repo)) == f"code:{commit[:12]}-dirty"

    inner = repo / "installed" / "copy"  # a folder inside another project's checkout is not that project
    inner.mkdir(parents=True)
    assert code_version(inner) == {"commit": "unknown", "dirty": None}
    assert code_version(tmp_path / "not-a-checkout") == {"commit": "unknown", "dirty": None}
    assert version_tag(code_version(tmp_path)) == "code:unknown"

    monkeypatch.setenv(COMMIT_ENV, "0123456789abcdef")  # e.g. a Docker build argument, the image has no .git
    assert code_version(tmp_path) == {"commit": "0123456789abcdef", "dirty": False}
