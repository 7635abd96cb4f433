"""The fault-injection hook of the JSONL store, and the comparison scripts/chaos.py reports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

from cai.records import TORN_WRITE_ENV, JsonlStore, TornTailWarning

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import chaos  # noqa: E402

WRITE = """
import sys
from cai.records import JsonlStore
with JsonlStore(sys.argv[1], flush_every=2) as s:
    for i in range(4):
        s.append({"id": f"r{i}", "text": "x" * 50})
"""


def test_torn_write_hook_kills_mid_line_and_resume_cuts_the_torn_tail(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text(json.dumps({"id": "earlier"}) + "\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), TORN_WRITE_ENV: "1"}
    r = subprocess.run([sys.executable, "-c", WRITE, str(path)], env=env, timeout=60)
    assert r.returncode == -signal.SIGKILL
    data = path.read_bytes()
    assert not data.endswith(b"\n") and data.count(b"\n") == 2  # r0 whole, r1 cut in the middle
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        store = JsonlStore(path)
    store.close()
    assert any(issubclass(x.category, TornTailWarning) for x in w)
    assert store.done == {"earlier", "r0"}
    assert path.read_bytes() == data[: data.rfind(b"\n") + 1]


def test_compare_store_counts_lost_duplicated_and_different_ignoring_timings(tmp_path):
    ref, got = tmp_path / "ref.jsonl", tmp_path / "got.jsonl"
    ref.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "a", "text": "1", "seconds": 1.0}, {"id": "b", "text": "2"}, {"id": "c", "text": "3"}]))
    got.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "a", "text": "1", "seconds": 9.0}, {"id": "b", "text": "X"}, {"id": "b", "text": "X"}]))
    assert chaos.compare_store(ref, got, "id") == {"records": 3, "lost": 1, "duplicated": 1, "different": 1,
                                                   "extra": 0}


def test_compare_training_needs_final_weights_to_call_two_runs_equal(tmp_path):
    import torch
    from safetensors.torch import save_file

    ref, got = tmp_path / "ref", tmp_path / "got"
    for d in (ref, got):
        d.mkdir()
        (d / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    # Neither run left final weights (only checkpoints, which are not compared): not "equal".
    for d in (ref, got):
        (d / "step-1").mkdir()
        save_file({"w": torch.zeros(2)}, str(d / "step-1" / "model.safetensors"))
    assert chaos.compare_training(ref, got)["weights_equal"] is False
    save_file({"w": torch.ones(2)}, str(ref / "model.safetensors"))
    save_file({"w": torch.ones(2)}, str(got / "model.safetensors"))
    assert chaos.compare_training(ref, got) | {"max_abs_diff": 0} == {
        "tensors": 1, "weights_equal": True, "max_abs_diff": 0, "losses_equal": True}
