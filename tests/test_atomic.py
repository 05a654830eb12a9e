"""One atomic writer (infra/atomic.py) for the checkpoints' fingerprints, the deploy and round records and training's
run file: a reader sees the old file or the new one, never part of either."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from infra.atomic import atomic_write, write_json

ROOT = Path(__file__).resolve().parents[1]


def test_a_failed_rename_leaves_the_old_file_whole_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "record.json"
    write_json(path, {"v": 1})

    def crash(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        write_json(path, {"v": 2})
    assert json.loads(path.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record.json"]


def test_the_new_content_is_on_disk_before_it_replaces_the_old(tmp_path, monkeypatch):
    synced: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda src, dst: (synced.append(f"replace {Path(src).name}"),
                                                           real_replace(src, dst)))
    atomic_write(tmp_path / "f.bin", b"data")
    assert len(synced) == 2 and synced[1].startswith("replace .f.bin.") and synced[0].endswith(synced[1][8:])
    assert (tmp_path / "f.bin").read_bytes() == b"data"


def test_a_private_file_is_readable_by_its_owner_only(tmp_path):
    write_json(tmp_path / "key.json", {"api_key": "k"}, private=True)
    assert stat.S_IMODE((tmp_path / "key.json").stat().st_mode) == 0o600


def test_no_other_module_writes_files_atomically_on_its_own():
    """The rule kept: one writer. The checkpoint's supersede rewrites a file in a stream, its one other rename."""
    found = []
    for package in ("engine", "stages", "steps", "pipelines", "training", "serving", "arena", "infra", "targets"):
        for path in (ROOT / package).rglob("*.py"):
            for line in path.read_text().splitlines():
                if "os.replace(" in line:
                    found.append(str(path.relative_to(ROOT)))
    assert sorted(found) == ["engine/checkpoint.py", "infra/atomic.py"], found
