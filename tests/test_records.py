"""The crash-safe JSONL store and run folders."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from cai.errors import ResumeError
from cai.records import JsonlStore, TornTailWarning, open_run_dir, read_jsonl


def test_store_appends_and_remembers_ids(tmp_path):
    p = tmp_path / "r.jsonl"
    with JsonlStore(p) as s:
        s.extend([{"id": "a", "v": 1}, {"id": "b", "v": 2}])
    with JsonlStore(p) as s:
        assert "a" in s and "b" in s and len(s) == 2
        with pytest.raises(ValueError, match="written twice"):
            s.append({"id": "a"})


@pytest.mark.parametrize("tail", ['{"id": "c", "v"', '{"id": "c"}garbage\n'])
def test_torn_tail_is_cut_with_a_warning_and_earlier_lines_kept(tmp_path, tail):
    p = tmp_path / "r.jsonl"
    good = '{"id": "a"}\n{"id": "b"}\n'
    p.write_text(good + tail)
    with pytest.warns(TornTailWarning, match="removed a torn last line"):
        s = JsonlStore(p)
    s.close()
    assert p.read_text() == good
    assert [r["id"] for r in read_jsonl(p)] == ["a", "b"]


@dataclass(frozen=True)
class Cfg:
    a: int = 1
    b: str = "x"


def test_run_dir_refuses_a_different_config_and_names_the_difference(tmp_path):
    open_run_dir(tmp_path, Cfg())
    open_run_dir(tmp_path, Cfg())  # same config: resume is fine
    with pytest.raises(ResumeError, match=r"different config:\s+a: 1 -> 2[\s\S]*--force"):
        open_run_dir(tmp_path, Cfg(a=2))
    open_run_dir(tmp_path, Cfg(a=2), force=True)
    assert "a: 2" in (tmp_path / "config.yaml").read_text()


def test_read_jsonl_error_is_located(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text(json.dumps({"id": 1}) + "\n[1]\n")
    from cai.errors import InputError

    with pytest.raises(InputError, match=rf"{p}:2: expected a JSON object"):
        list(read_jsonl(p))
