"""The crash-safe JSONL store and run folders."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cai.errors import ResumeError
from cai.records import JsonlStore, RunLockedError, TornTailWarning, lock_run_dir, open_run_dir, read_jsonl

REPO = Path(__file__).resolve().parent.parent


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


@dataclass(frozen=True)
class Inner:
    c: int = 3


@dataclass(frozen=True)
class Newer:
    a: int = 1
    b: str = "x"
    inner: Inner = field(default_factory=Inner)


def test_a_field_added_since_the_run_resumes_at_its_default_and_is_refused_away_from_it(tmp_path):
    # A run folder written before fields `b` and `inner.c` existed.
    (tmp_path / "config.yaml").write_text("a: 1\ninner: {}\n")
    open_run_dir(tmp_path, Newer())  # the new fields at their defaults: the behaviour the run had
    (tmp_path / "config.yaml").write_text("a: 1\ninner: {}\n")
    with pytest.raises(ResumeError, match=r"b: 'x' -> 'y'"):
        open_run_dir(tmp_path, Newer(b="y"))
    with pytest.raises(ResumeError, match=r"inner.c: 3 -> 4"):
        open_run_dir(tmp_path, Newer(inner=Inner(c=4)))
    (tmp_path / "config.yaml").write_text("a: 1\nb: z\n")  # a saved value is never overridden
    with pytest.raises(ResumeError, match=r"b: 'z' -> 'x'"):
        open_run_dir(tmp_path, Newer())


def test_a_finished_run_made_before_a_field_existed_is_reused_at_its_default(tmp_path):
    from cai.checkpoint import DONE_FILE, finished_run

    (tmp_path / "config.yaml").write_text("a: 1\ninner: {}\n")
    (tmp_path / DONE_FILE).write_text('{"steps": 3}')
    assert finished_run(tmp_path, Newer())["steps"] == 3
    with pytest.raises(ResumeError, match=r"b: 'x' -> 'y'"):
        finished_run(tmp_path, Newer(b="y"))


def test_read_jsonl_error_is_located(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text(json.dumps({"id": 1}) + "\n[1]\n")
    from cai.errors import InputError

    with pytest.raises(InputError, match=rf"{p}:2: expected a JSON object"):
        list(read_jsonl(p))


def test_store_drops_stale_records_and_keeps_the_other_lines_byte_for_byte(tmp_path):
    p = tmp_path / "r.jsonl"
    with JsonlStore(p) as s:
        s.extend([{"id": "a", "key": "1"}, {"id": "b", "key": "2"}, {"id": "c", "key": "3"}, {"id": "x", "key": "9"}])
    lines = p.read_text().splitlines(keepends=True)
    # b's inputs changed; x is not among today's inputs (left alone); d is new.
    with JsonlStore(p, current_keys={"a": "1", "b": "2b", "c": "3", "d": "4"}) as s:
        assert s.stale == ["b"] and "b" not in s and "a" in s and "x" in s
        s.append({"id": "b", "key": "2b"})
    assert p.read_text() == lines[0] + lines[2] + lines[3] + json.dumps({"id": "b", "key": "2b"}) + "\n"
    # The dropped line is kept, byte for byte, where nothing reads it as output.
    assert (tmp_path / "r.jsonl.stale").read_text() == lines[1]
    # A second edit appends to the archive, never overwrites it.
    with JsonlStore(p, current_keys={"a": "1b"}):
        pass
    assert (tmp_path / "r.jsonl.stale").read_text() == lines[1] + lines[0]


def test_store_names_ids_found_twice_on_disk(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text("".join(json.dumps({"id": i}) + "\n" for i in ["a", "b", "a", "c", "b", "a"]))
    with pytest.raises(ResumeError, match=rf"{p}:3: 2 record id\(s\) appear more than once: 'a' on lines 1, 3, 6; "
                                          r"'b' on lines 2, 5\. Two processes[\s\S]*fix: keep the first line"):
        JsonlStore(p)


def test_run_dir_refuses_other_inputs_unless_forced(tmp_path):
    (tmp_path / "records.jsonl").write_text('{"id": "a"}\n')
    open_run_dir(tmp_path, Cfg(), inputs={"model_fingerprint": "aaa"}, records="records.jsonl")
    with pytest.raises(ResumeError, match=r"inputs.model_fingerprint: 'aaa' -> 'bbb'"):
        open_run_dir(tmp_path, Cfg(), inputs={"model_fingerprint": "bbb"}, records="records.jsonl")
    open_run_dir(tmp_path, Cfg(b="y"), inputs={"model_fingerprint": "bbb"}, records="records.jsonl", resumable=("b:",),
                 force=True)
    open_run_dir(tmp_path, Cfg(b="z"), inputs={"model_fingerprint": "bbb"}, records="records.jsonl",
                 resumable=("b:",))  # a resumable field needs no force


HOLDER = """
import sys, time
from cai.records import lock_run_dir
lock = lock_run_dir(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(600)
"""


def test_the_run_lock_names_its_holder_and_dies_with_it(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=rf"{tmp_path} is in use by another cai process \(pid {proc.pid}\)"):
            lock_run_dir(tmp_path).acquire()
    finally:
        proc.send_signal(signal.SIGKILL)  # no cleanup runs: the OS alone drops the lock
        proc.wait()
    deadline = time.monotonic() + 10
    while True:
        try:
            with lock_run_dir(tmp_path):
                break
        except RunLockedError:
            assert time.monotonic() < deadline, "kill -9 left the folder locked"
            time.sleep(0.05)


def test_a_filesystem_without_flock_warns_and_runs_unlocked(tmp_path, monkeypatch):
    import errno
    import fcntl

    from cai.records import RunLockUnavailableWarning

    def no_flock(fd, op):
        raise OSError(errno.ENOSYS, "Function not implemented")  # Lustre mounted without -o flock

    monkeypatch.setattr(fcntl, "flock", no_flock)
    with pytest.warns(RunLockUnavailableWarning, match=rf"{tmp_path}: the run lock cannot be taken on this "
                                                       r"filesystem \(.*Function not implemented\)"):
        with lock_run_dir(tmp_path):
            with JsonlStore(tmp_path / "r.jsonl") as s:
                s.append({"id": "a"})
    assert (tmp_path / "r.jsonl").read_text() == '{"id": "a"}\n'


def test_opening_a_large_store_streams_it(tmp_path):
    # A store is read line by line: opening one (torn-tail check, duplicate ids, stale keys and
    # the rewrite without them) holds ids and keys, not every record, in memory.
    import tracemalloc

    p = tmp_path / "big.jsonl"
    payload = "x" * 4000
    with p.open("w") as f:
        for i in range(5000):  # 20 MB
            f.write(json.dumps({"id": f"r{i}", "key": "k", "text": payload}) + "\n")
        f.write('{"id": "torn", "te')
    keys = {f"r{i}": "k" if i % 2 else "new" for i in range(5000)}
    tracemalloc.start()
    try:
        with pytest.warns(TornTailWarning):
            s = JsonlStore(p, current_keys=keys)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    s.close()
    assert len(s.stale) == 2500 and len(s) == 2500
    assert [json.loads(x)["id"] for x in p.read_text().splitlines()] == [f"r{i}" for i in range(1, 5000, 2)]
    assert peak < 5_000_000, f"peak {peak / 1e6:.0f} MB for a 20 MB store"


def test_stale_rewrite_on_a_full_disk_is_a_located_error_and_leaves_the_store(tmp_path, monkeypatch):
    import errno

    from cai import records
    from cai.errors import OutputError

    p = tmp_path / "r.jsonl"
    with JsonlStore(p) as s:
        s.extend([{"id": "a", "key": "1"}, {"id": "b", "key": "2"}])
    before = p.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(records.os, "fsync", full)
    with pytest.raises(OutputError, match=rf"{p}: cannot write: No space left on device[\s\S]*fix: free some disk"):
        JsonlStore(p, current_keys={"a": "1b", "b": "2"})
    assert p.read_bytes() == before
    assert not (tmp_path / "r.jsonl.tmp").exists()


def test_stale_archive_cut_by_a_crash_keeps_the_next_dropped_line_whole(tmp_path):
    p = tmp_path / "r.jsonl"
    with JsonlStore(p) as s:
        s.extend([{"id": "a", "key": "1"}, {"id": "b", "key": "2"}])
    line_a = p.read_text().splitlines(keepends=True)[0]
    (tmp_path / "r.jsonl.stale").write_text('{"id": "old", "ke')  # killed while archiving earlier
    with JsonlStore(p, current_keys={"a": "1b", "b": "2"}):
        pass
    assert (tmp_path / "r.jsonl.stale").read_text() == '{"id": "old", "ke\n' + line_a
