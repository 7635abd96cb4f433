"""The shared training loop: data sources, config checks, data order, exact resume, gradient
accumulation, checkpoints and logs. A tiny random Llama (2 layers, hidden 64) keeps it fast."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import write_jsonl
from safetensors.torch import load_file

from cai.checkpoint import is_finished, rng_state, seed_everything, set_rng_state
from cai.data import check_columns, read_rows
from cai.errors import ConfigError, InputError, ResumeError
from cai.sft import SFTConfig, train_sft
from cai.train_common import batch_indices, exact_div

pytestmark = pytest.mark.usefixtures("one_thread")  # one intra-op thread (conftest.py says why)


def conversations(n: int) -> list[dict]:
    return [{"id": f"c{i}", "messages": [{"role": "user", "content": f"Question {i}: what is {i} + {i}?"},
                                         {"role": "assistant", "content": f"{i} + {i} is {2 * i}."}]}
            for i in range(n)]


# --- config -----------------------------------------------------------------------------------


def test_exact_div_names_the_numbers():
    assert exact_div(12, 4, "x") == 3
    with pytest.raises(ConfigError, match="x: 10 is not divisible by 4"):
        exact_div(10, 4, "x")


def test_config_checks_batch_and_required_fields():
    with pytest.raises(ConfigError, match="batch_size 6 / gradient_accumulation_steps: 6 is not divisible by 4"):
        SFTConfig(out="o", data="d", batch_size=6, gradient_accumulation_steps=4)
    with pytest.raises(ConfigError, match="out is not set"):
        SFTConfig(data="d")
    with pytest.raises(ConfigError, match="data is not set"):
        SFTConfig(out="o")
    cfg = SFTConfig(out="o", data="d", batch_size=8, gradient_accumulation_steps=4)
    assert cfg.local_batch_size == 2
    assert cfg.total_steps(17) == 3 and SFTConfig(out="o", data="d", max_steps=5).total_steps(17) == 5


# --- data order and RNG -----------------------------------------------------------------------


def test_batch_indices_cover_each_epoch_once_and_depend_only_on_position():
    n = 7
    stream = batch_indices(n, seed=3, start=0, count=3 * n)
    for e in range(3):
        assert sorted(stream[e * n:(e + 1) * n]) == list(range(n))
    assert stream[:n] != stream[n:2 * n]  # a new order every epoch
    # any window of the stream can be recomputed from its start alone (what resume relies on)
    assert batch_indices(n, 3, 5, 6) == stream[5:11]
    assert batch_indices(n, 4, 0, n) != stream[:n]


def test_rng_state_round_trip():
    seed_everything(1)
    state = rng_state()
    a = (torch.rand(3), __import__("random").random(), __import__("numpy").random.rand())
    set_rng_state(state)
    b = (torch.rand(3), __import__("random").random(), __import__("numpy").random.rand())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


# --- data sources -----------------------------------------------------------------------------


def test_read_rows_from_jsonl_dataset_folder_and_stage_folder(tmp_path):
    from datasets import Dataset, DatasetDict

    rows = conversations(5)
    f = write_jsonl(tmp_path / "sft.jsonl", [rows[0], rows[1]])
    got = read_rows(f, "sft")
    assert [r.data["id"] for r in got] == ["c0", "c1"]
    assert str(got[1].where) == f"{f}:2, record 'c1'"
    assert read_rows(f, "sft", "test") is None

    dd = DatasetDict({"train_sft": Dataset.from_list(rows[:3]), "test_sft": Dataset.from_list(rows[3:])})
    dd.save_to_disk(str(tmp_path / "stage" / "dataset"))
    assert len(read_rows(tmp_path / "stage" / "dataset", "sft")) == 3
    assert len(read_rows(tmp_path / "stage", "sft", "test")) == 2  # a stage folder: dataset/ first
    with pytest.raises(InputError, match=r"the dataset has no split 'train_prefs' \(its splits: train_sft, test_sft\)"):
        read_rows(tmp_path / "stage", "prefs")

    features = Dataset.from_list(rows).features  # an empty split keeps its columns, as cai.export writes it
    empty = Dataset.from_dict({c: [] for c in features}, features=features)
    empty_test = DatasetDict({"train_sft": Dataset.from_list(rows[:3]), "test_sft": empty})
    empty_test.save_to_disk(str(tmp_path / "empty_test"), num_shards={"train_sft": 1, "test_sft": 1})
    assert read_rows(tmp_path / "empty_test", "sft", "test") is None

    only_jsonl = tmp_path / "revise_out"
    only_jsonl.mkdir()
    write_jsonl(only_jsonl / "sft.jsonl", rows[:2])
    assert len(read_rows(only_jsonl, "sft")) == 2
    with pytest.raises(InputError, match=r"holds no training data \(looked for dataset/, prefs.jsonl"):
        read_rows(only_jsonl, "prefs")
    with pytest.raises(InputError, match="does not exist"):
        read_rows(tmp_path / "nope.jsonl", "sft")


def test_check_columns_names_file_line_and_present_columns(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", [{"messages": []}, {"id": "x", "prompt": "hi", "text": "t"}])
    rows = read_rows(f, "sft")
    with pytest.raises(InputError) as e:
        check_columns(rows, ["messages"], f)
    assert f"1 row(s) of {f} lack required columns (messages):" in str(e.value)
    assert f"{f}:2, record 'x': missing column(s) 'messages' (it has: id, prompt, text)" in str(e.value)


# --- the loop ---------------------------------------------------------------------------------


def sft_config(tiny: str, data: Path, out: Path, **kw) -> SFTConfig:
    base = dict(out=str(out), data=str(data), model=tiny, batch_size=4, max_steps=6, learning_rate=1e-3,
                max_length=48, log_every=1, checkpoint_every=2, warmup_ratio=0.0, device="cpu")
    return SFTConfig(**{**base, **kw})


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def assert_same_weights(a: dict, b: dict, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


class Crash(RuntimeError):
    pass


def test_interrupted_and_resumed_run_ends_with_the_same_weights(tiny, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", conversations(10))  # 6 steps of 4 = 2.4 epochs
    whole = train_sft(sft_config(tiny, data, tmp_path / "whole"), progress=False)
    assert whole["steps"] == 6 and whole["resumed_from"] == 0

    # 1. a hard crash after step 5: the periodic checkpoint of step 4 is the resume point
    cfg = sft_config(tiny, data, tmp_path / "crashed")

    def crash(step: int) -> None:
        if step == 5:
            raise Crash

    with pytest.raises(Crash):
        train_sft(cfg, progress=False, on_step=crash)
    assert is_finished(cfg.out) is None
    resumed = train_sft(cfg, progress=False)
    assert resumed["resumed_from"] == 4 and resumed["steps"] == 6
    assert_same_weights(weights(tmp_path / "whole"), weights(tmp_path / "crashed"))
    steps = [json.loads(x)["step"] for x in (tmp_path / "crashed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # the step redone after the crash is logged once

    # 2. Ctrl-C after step 3 (no periodic checkpoint there): a checkpoint is saved on the way out
    cfg = sft_config(tiny, data, tmp_path / "ctrl_c", checkpoint_every=0)

    def interrupt(step: int) -> None:
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_sft(cfg, progress=False, on_step=interrupt)
    assert train_sft(cfg, progress=False)["resumed_from"] == 3
    assert_same_weights(weights(tmp_path / "whole"), weights(tmp_path / "ctrl_c"))

    # a finished run is not trained again, nor continued with another config
    assert train_sft(cfg, progress=False)["already_finished"] is True
    with pytest.raises(ResumeError, match=r"holds a finished run made with a different config:\n    max_steps: 6 -> 8"):
        train_sft(sft_config(tiny, data, tmp_path / "ctrl_c", checkpoint_every=0, max_steps=8), force=True)


def test_gradient_accumulation_equals_one_large_batch(tiny, tmp_path):
    # uneven lengths, so micro-batches pad differently and hold different token counts
    rows = conversations(8)
    rows[0]["messages"][1]["content"] = "a much longer answer than the others, " * 3
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    train_sft(sft_config(tiny, data, tmp_path / "one", max_steps=3, checkpoint_every=0), progress=False)
    train_sft(sft_config(tiny, data, tmp_path / "acc", max_steps=3, checkpoint_every=0,
                         gradient_accumulation_steps=4), progress=False)
    assert_same_weights(weights(tmp_path / "one"), weights(tmp_path / "acc"), atol=1e-5)


def test_checkpoints_are_pruned_and_logs_written(tiny, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", conversations(4))
    out = tmp_path / "run"
    train_sft(sft_config(tiny, data, out, max_steps=5, checkpoint_every=1, keep_checkpoints=2,
                         delete_checkpoints_when_done=False), progress=False)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000003", "step-00000004"]
    ckpt = out / "checkpoints" / "step-00000004"
    assert sorted(p.name for p in ckpt.iterdir()) == ["model.pt", "optimizer.pt", "rng.pt", "scheduler.pt",
                                                    "state.json"]
    assert json.loads((ckpt / "state.json").read_text()) == {"step": 4, "samples_seen": 16, "n_examples": 4,
                                                             "total_steps": 5}
    logged = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"train/loss", "train/lr", "train/grad_norm", "perf/samples_per_s"} <= logged[0].keys()
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert (out / "config.yaml").exists() and (out / "train_done.json").exists()


def test_docs_list_every_config_field_with_its_flag():
    import dataclasses

    from cai.reward import RMConfig
    from cai.reward_eval import RMEvalConfig, RMScoreConfig

    docs = (Path(__file__).resolve().parent.parent / "docs" / "training.md").read_text()
    for cls in (SFTConfig, RMConfig, RMEvalConfig, RMScoreConfig):
        for f in dataclasses.fields(cls):
            assert f"| `{f.name}` (`--{f.name.replace('_', '-')}`) |" in docs, (cls.__name__, f.name)


def test_data_hash_of_a_large_training_set_is_computed_row_by_row():
    """inputs.json hashes every tokenized row trained on: at a million rows, one JSON text of them
    all is gigabytes. The hash is the same as `key(rows)`, but made without that text."""
    import tracemalloc

    from cai.checkpoint import training_inputs
    from cai.provenance import key

    rows = [{"input_ids": list(range(1000 + i, 1512 + i)), "labels": list(range(512))} for i in range(2000)]
    tracemalloc.start()
    try:
        hashes = training_inputs({}, {"train": rows})["data_hashes"]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert hashes == {"train": key(rows)}
    assert peak < 1 << 20, f"hashing {len(rows)} rows peaked at {peak / 2**20:.1f} MiB"
