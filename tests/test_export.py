"""SFT and preference exports (cai.export): rows, flags, splits, the DatasetDict."""

from __future__ import annotations

import json

import pytest

from cai.data import read_rows
from cai.errors import ConfigError
from cai.export import (
    ExportConfig,
    export_revisions,
    revision_pref_rows,
    revision_sft_rows,
    split_of,
    split_rows,
    write_dataset,
)
from cai.schema import ConstitutionStamp, Provenance, ReviseRecord, Round, Step, chain_flags


def step(text, flags=()):
    return Step(text=text, prompt_tokens=5, completion_tokens=3, finish_reason="stop", flags=tuple(flags), seed=1)


def record(rid, initial="first answer", revisions=("better", "best"), rev_flags=None, init_flags=()):
    """A revise record as `cai revise` writes it (cai.schema.ReviseRecord)."""
    rev_flags = rev_flags or [()] * len(revisions)
    rounds = tuple(Round(round=k + 1, principle=f"p{k + 1}", principle_hash=f"h{k + 1}",
                         critique=step("a critique"), revision=step(text, fl))
                   for k, (text, fl) in enumerate(zip(revisions, rev_flags, strict=True)))
    return ReviseRecord(
        id=rid,
        input=({"role": "system", "content": "be kind"}, {"role": "user", "content": f"question {rid}"}),
        source=f"prompts.jsonl:{rid}", initial=step(initial, init_flags), rounds=rounds, final=revisions[-1],
        flags=tuple(chain_flags(step(initial, init_flags), rounds)), direct=False,
        constitution=ConstitutionStamp(name="c", version="1", hash="chash"),
        provenance=Provenance(model="m", model_fingerprint="fp", engine={"backend": "fake", "dtype": "auto"},
                              sampling={"response": {}, "critique": {}}, seed=0, cai_version="0"),
        clean_version=2, key=f"key-{rid}",
    )


def test_sft_rows_are_prompt_turns_plus_the_final_revision():
    rows, skipped = revision_sft_rows([record("a")], ExportConfig())
    assert rows == [{
        "id": "a",
        "messages": [{"role": "system", "content": "be kind"}, {"role": "user", "content": "question a"},
                     {"role": "assistant", "content": "best"}],
        "round": 2, "principle": "p2", "principle_hash": "h2", "constitution_hash": "chash", "key": "key-a",
    }]
    assert not skipped


def test_sft_all_rounds_gives_one_row_per_revision():
    rows, _ = revision_sft_rows([record("a")], ExportConfig(sft_all_rounds=True))
    assert [(r["round"], r["messages"][-1]["content"]) for r in rows] == [(1, "better"), (2, "best")]


def test_flagged_revisions_are_left_out_and_counted_unless_kept():
    recs = [record("a", rev_flags=[(), ("truncated",)]), record("b"), record("c", rev_flags=[("empty",), ()])]
    rows, skipped = revision_sft_rows(recs, ExportConfig())
    assert [r["id"] for r in rows] == ["b", "c"] and skipped == {"flagged: truncated": 1}
    rows, skipped = revision_sft_rows(recs, ExportConfig(sft_all_rounds=True))
    assert [(r["id"], r["round"]) for r in rows] == [("a", 1), ("b", 1), ("b", 2), ("c", 2)]
    assert skipped == {"flagged: truncated": 1, "flagged: empty": 1}
    rows, skipped = revision_sft_rows(recs, ExportConfig(skip_flags=()))
    assert len(rows) == 3 and not skipped
    rows, _ = revision_sft_rows(recs, ExportConfig(skip_flags=("empty",)))
    assert [r["id"] for r in rows] == ["a", "b", "c"]


def test_pref_rows_are_trl_conversational_revision_over_original():
    rows, skipped = revision_pref_rows([record("a")], ExportConfig())
    assert rows == [{
        "id": "a",
        "prompt": [{"role": "system", "content": "be kind"}, {"role": "user", "content": "question a"}],
        "chosen": [{"role": "assistant", "content": "best"}],
        "rejected": [{"role": "assistant", "content": "first answer"}],
        "principles": ["p1", "p2"], "principle_hashes": ["h1", "h2"], "constitution_hash": "chash",
        "key": "key-a",
    }]
    assert not skipped


def test_pairs_with_a_flagged_side_or_no_change_are_left_out():
    recs = [record("a", init_flags=("degenerate",)), record("b", rev_flags=[(), ("empty",)]),
            record("c", initial="same", revisions=("x", "same ")), record("d")]
    rows, skipped = revision_pref_rows(recs, ExportConfig())
    assert [r["id"] for r in rows] == ["d"]
    assert skipped == {"flagged: degenerate": 1, "flagged: empty": 1, "unchanged": 1}


def test_split_is_a_seeded_hash_of_the_id():
    ids = [f"id-{i}" for i in range(2000)]
    test = [i for i in ids if split_of(i, 0, 0.1) == "test"]
    assert 150 < len(test) < 250  # ~10%
    # Stable: independent of the other rows, their order, and the process.
    assert [split_of(i, 0, 0.1) for i in reversed(ids)] == [split_of(i, 0, 0.1) for i in ids][::-1]
    assert split_of("id-0", 0, 0.1) == split_of("id-0", 0, 0.1)
    # A larger fraction only moves ids into test; another seed gives another split.
    assert set(test) <= {i for i in ids if split_of(i, 0, 0.3) == "test"}
    assert test != [i for i in ids if split_of(i, 1, 0.1) == "test"]
    assert all(split_of(i, 0, 0.0) == "train" for i in ids)


def test_split_rows_keeps_every_row_of_an_id_together():
    rows = [{"id": f"r{i % 50}", "round": i // 50} for i in range(150)]
    splits = split_rows(rows, "sft", 0, 0.3)
    assert set(splits) == {"train_sft", "test_sft"}
    train_ids = {r["id"] for r in splits["train_sft"]}
    test_ids = {r["id"] for r in splits["test_sft"]}
    assert train_ids and test_ids and not train_ids & test_ids
    assert len(splits["train_sft"]) + len(splits["test_sft"]) == 150


@pytest.mark.parametrize("kwargs", [{"test_fraction": 1.0}, {"test_fraction": -0.1},
                                    {"skip_flags": ("truncated", "bogus")}])
def test_export_config_checks(kwargs):
    with pytest.raises(ConfigError, match="test_fraction|bogus"):
        ExportConfig(**kwargs)


def test_export_revisions_writes_jsonl_and_a_datasetdict_that_the_trainers_read(tmp_path):
    import datasets

    recs = [record(f"r{i}") for i in range(30)] + [record("flagged", rev_flags=[(), ("degenerate",)])]
    s = export_revisions(recs, tmp_path, ExportConfig(test_fraction=0.2))
    assert (s.sft_rows, s.prefs_rows) == (30, 30)
    assert s.sft_skipped == {"flagged: degenerate": 1} and s.prefs_skipped == {"flagged: degenerate": 1}
    assert s.splits["train_sft"] + s.splits["test_sft"] == 30 and s.splits["test_sft"] > 0
    assert len((tmp_path / "sft.jsonl").read_text().splitlines()) == 30
    assert json.loads((tmp_path / "prefs.jsonl").read_text().splitlines()[0])["chosen"][0]["role"] == "assistant"
    dd = datasets.load_from_disk(str(tmp_path / "dataset"))
    assert list(dd) == ["train_sft", "test_sft", "train_prefs", "test_prefs"]
    assert {r["id"] for r in dd["test_sft"]} == {r["id"] for r in dd["test_prefs"]}
    assert dd["train_prefs"][0]["rejected"] == [{"role": "assistant", "content": "first answer"}]
    # The training stages find the splits in the run folder.
    assert len(read_rows(tmp_path, "sft", "train")) == s.splits["train_sft"]
    assert len(read_rows(tmp_path, "prefs", "test")) == s.splits["test_prefs"]


def test_empty_splits_keep_their_schema_and_load(tmp_path):
    import datasets

    s = export_revisions([record("a", rev_flags=[(), ("empty",)])], tmp_path, ExportConfig())
    assert s.sft_rows == 0 and s.prefs_rows == 0
    dd = datasets.load_from_disk(str(tmp_path / "dataset"))
    assert all(len(dd[k]) == 0 for k in dd)
    assert "messages" in dd["train_sft"].features and "chosen" in dd["test_prefs"].features


def test_write_dataset_replaces_the_folder_whole_and_cleans_leftovers(tmp_path):
    import datasets

    folder = tmp_path / "dataset"
    write_dataset(folder, {"train_x": [{"id": "a", "v": 1}], "test_x": []})
    (tmp_path / "dataset.tmp").mkdir()  # left by a crash mid-write
    (folder / "stray.txt").write_text("old file")
    write_dataset(folder, {"train_x": [{"id": "b", "v": 2}, {"id": "c", "v": 3}], "test_x": [{"id": "d", "v": 4}]})
    dd = datasets.load_from_disk(str(folder))
    assert dd["train_x"]["id"] == ["b", "c"] and dd["test_x"]["v"] == [4]
    assert not (folder / "stray.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset"]


def test_write_dataset_refuses_a_kind_with_no_rows_and_no_features(tmp_path):
    with pytest.raises(ValueError, match="no rows and no features"):
        write_dataset(tmp_path / "d", {"train_x": [], "test_x": []})
