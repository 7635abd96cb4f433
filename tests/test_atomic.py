"""Whole-file writes through a temporary file and a rename (cai.atomic)."""

from __future__ import annotations

import errno
import json
import os

import pytest

from cai.atomic import atomic_open, write_json_atomic
from cai.errors import OutputError


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({}, json.dumps({"a": [1, "é"]}, indent=2) + "\n"),
    ({"indent": 1, "newline": False}, json.dumps({"a": [1, "é"]}, indent=1)),
    ({"ensure_ascii": False, "sort_keys": True}, json.dumps({"a": [1, "é"]}, indent=2, ensure_ascii=False) + "\n"),
])
def test_json_is_written_byte_for_byte_as_json_dumps(tmp_path, kwargs, expected):
    path = tmp_path / "sub" / "x.json"  # the folder is made
    write_json_atomic(path, {"a": [1, "é"]}, **kwargs)
    assert path.read_bytes() == expected.encode("utf-8")
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]


def test_a_failed_write_keeps_the_old_file_leaves_no_tmp_and_names_the_path(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    path.write_text("old")

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OutputError, match=rf"{path}: cannot write: No space left on device[\s\S]*free some disk"):
        write_json_atomic(path, {"new": 1})
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_an_error_inside_the_block_keeps_the_old_file_and_removes_the_tmp(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("old\n")
    with pytest.raises(ValueError, match="bad row"), atomic_open(path) as f:
        f.write("half\n")
        raise ValueError("bad row")
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl"]
