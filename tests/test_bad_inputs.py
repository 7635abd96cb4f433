"""The bad-input corpus: every broken input goes through the real CLI (`python -m cai ...` in its
own process, as a user runs it) and must give exit 1, exactly one `Error:` line naming the file
and the line or record, a `fix:`, no traceback, and leave output already written untouched.

The files live in tests/bad_inputs/. Model folders (missing tokenizer, truncated safetensors, ...)
are built at test time from the prepared default model, so the corpus holds no weights. None of
the cases loads a model: the checks run before anything slow. Run them under the heavy lock all the same: a check that
regresses would load the model.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BAD = Path(__file__).resolve().parent / "bad_inputs"
OK_PROMPTS = str(BAD / "prompts_ok.jsonl")
OK_PRINCIPLES = str(BAD / "principles_ok.yaml")


def revise(*args: str) -> list[str]:
    """`cai revise` with good inputs, except for what `args` replaces."""
    base = {"--prompts": OK_PROMPTS, "--constitution": OK_PRINCIPLES, "--out": "{out}"}
    flags = dict(zip(args[::2], args[1::2], strict=True))
    return ["revise", *[x for k, v in {**base, **flags}.items() for x in (k, v)], "--max-tokens", "8"]


def judge_eval(pairs: str) -> list[str]:
    return ["judge", "eval", "--pairs", pairs, "--constitution", OK_PRINCIPLES, "--out", "{out}"]


# (case id, argv ({bad} = tests/bad_inputs, {out} = an output folder holding earlier output,
#  {model} = a model folder made by `setup`), what the Error line must name, setup)
CASES: list[tuple[str, list[str], list[str], str | None]] = [
    # --- principle files (cai principles check, and through a stage) ---
    ("principles-bad-yaml", ["principles", "show", "{bad}/principles_bad_yaml.yaml"],
     ["principles_bad_yaml.yaml:6"], None),
    ("principles-unknown-key", ["principles", "show", "{bad}/principles_unknown_key.yaml"],
     ["principles_unknown_key.yaml:5"], None),
    ("principles-missing-field", ["principles", "show", "{bad}/principles_missing_field.yaml"],
     ["principles_missing_field.yaml:4"], None),
    ("principles-duplicate-id", ["principles", "show", "{bad}/principles_duplicate_id.yaml"],
     ["principles_duplicate_id.yaml:8"], None),
    ("principles-bad-weight", ["principles", "show", "{bad}/principles_bad_weight.yaml"],
     ["principles_bad_weight.yaml:8"], None),
    ("principles-bad-id", ["principles", "show", "{bad}/principles_bad_id.yaml"],
     ["principles_bad_id.yaml:4"], None),
    ("principles-include-missing", ["principles", "show", "{bad}/principles_include_missing.yaml"],
     ["principles_include_missing.yaml:3", "not-there.yaml"], None),
    ("principles-include-cycle", ["principles", "show", "{bad}/principles_cycle_a.yaml"],
     ["principles_cycle_a.yaml", "principles_cycle_b.yaml"], None),
    ("principles-empty", ["principles", "show", "{bad}/principles_empty.yaml"], ["principles_empty.yaml"], None),
    ("principles-list", ["principles", "show", "{bad}/principles_list.yaml"], ["principles_list.yaml:1"], None),
    ("principles-no-version", ["principles", "show", "{bad}/principles_no_version.yaml"],
     ["principles_no_version.yaml", "version"], None),
    ("principles-disable-unknown", ["principles", "show", "{bad}/principles_disable_unknown.yaml"],
     ["principles_disable_unknown.yaml:4", "no-such-principle"], None),
    ("principles-not-utf8", ["principles", "show", "{bad}/principles_not_utf8.yaml"],
     ["principles_not_utf8.yaml:4"], None),
    ("principles-missing-file", ["principles", "show", "{bad}/no_such_principles.yaml"],
     ["no_such_principles.yaml"], None),
    ("revise-bad-principles", revise("--constitution", "{bad}/principles_unknown_key.yaml"),
     ["principles_unknown_key.yaml:5"], None),
    # --- prompt files, in every supported format ---
    ("prompts-jsonl-bad-json", revise("--prompts", "{bad}/prompts_bad_json.jsonl"),
     ["prompts_bad_json.jsonl:3"], None),
    ("prompts-jsonl-no-column", revise("--prompts", "{bad}/prompts_no_column.jsonl"),
     ["prompts_no_column.jsonl", "'prompt'"], None),
    ("prompts-jsonl-empty", revise("--prompts", "{bad}/prompts_empty.jsonl"), ["prompts_empty.jsonl"], None),
    ("prompts-jsonl-all-empty", revise("--prompts", "{bad}/prompts_all_empty.jsonl"),
     ["prompts_all_empty.jsonl:1"], None),
    ("prompts-jsonl-not-objects", revise("--prompts", "{bad}/prompts_not_objects.jsonl"),
     ["prompts_not_objects.jsonl:1"], None),
    ("prompts-jsonl-ends-with-assistant", revise("--prompts", "{bad}/prompts_bad_turns.jsonl"),
     ["prompts_bad_turns.jsonl:1"], None),
    ("prompts-jsonl-not-utf8", revise("--prompts", "{bad}/prompts_not_utf8.jsonl"),
     ["prompts_not_utf8.jsonl:1"], None),
    ("prompts-json-bad-json", revise("--prompts", "{bad}/prompts_bad.json"), ["prompts_bad.json:2"], None),
    ("prompts-json-not-a-list", revise("--prompts", "{bad}/prompts_dict.json"), ["prompts_dict.json"], None),
    ("prompts-csv-no-column", revise("--prompts", "{bad}/prompts_no_column.csv"),
     ["prompts_no_column.csv", "question"], None),
    ("prompts-csv-not-utf8", revise("--prompts", "{bad}/prompts_not_utf8.csv"), ["prompts_not_utf8.csv:2"], None),
    ("prompts-hf-not-a-dataset", revise("--prompts", "{bad}/not_a_dataset"), ["not_a_dataset"], None),
    ("prompts-hf-wrong-split", revise("--prompts", "{dataset}", "--split", "validation"),
     ["dataset", "validation"], "dataset"),
    ("prompts-unsupported-format", revise("--prompts", "{bad}/prompts.txt"), ["prompts.txt"], None),
    ("prompts-missing-file", revise("--prompts", "{bad}/no_such_prompts.jsonl"), ["no_such_prompts.jsonl"], None),
    # --- preference pairs and training data ---
    ("pairs-judge-eval-no-rejected", judge_eval("{bad}/pairs_no_rejected.jsonl"),
     ["pairs_no_rejected.jsonl:1"], None),
    ("pairs-judge-eval-bad-json", judge_eval("{bad}/pairs_bad_json.jsonl"), ["pairs_bad_json.jsonl:2"], None),
    ("pairs-rm-missing-rejected", ["rm", "train", "--prefs", "{bad}/pairs_missing_rejected.jsonl", "--out",
                                   "{out}", "--max-steps", "1"], ["pairs_missing_rejected.jsonl:2", "rejected"], None),
    ("pairs-rm-bad-p", ["rm", "train", "--prefs", "{bad}/pairs_bad_p.jsonl", "--out", "{out}", "--max-steps", "1"],
     ["pairs_bad_p.jsonl:1", "1.7"], None),
    ("pairs-rm-bad-role", ["rm", "train", "--prefs", "{bad}/pairs_wrong_roles.jsonl", "--out", "{out}",
                           "--max-steps", "1"], ["pairs_wrong_roles.jsonl:1", "robot"], None),
    ("sft-data-no-messages", ["sft", "--data", "{bad}/sft_no_messages.jsonl", "--out", "{out}", "--max-steps", "1"],
     ["sft_no_messages.jsonl:2"], None),
    ("sft-data-bad-json", ["sft", "--data", "{bad}/sft_bad_json.jsonl", "--out", "{out}", "--max-steps", "1"],
     ["sft_bad_json.jsonl:1"], None),
    # --- config files ---
    ("config-unknown-key", ["revise", "--config", "{bad}/config_unknown_key.yaml"],
     ["config_unknown_key.yaml:3", "rouds", "rounds"], None),
    ("config-wrong-type", ["revise", "--config", "{bad}/config_wrong_type.yaml"],
     ["config_wrong_type.yaml:3", "rounds", "two"], None),
    ("config-bad-yaml", ["revise", "--config", "{bad}/config_bad_yaml.yaml"], ["config_bad_yaml.yaml:3"], None),
    ("config-not-a-mapping", ["revise", "--config", "{bad}/config_list.yaml"], ["config_list.yaml"], None),
    ("config-engine-unknown-key", ["revise", "--config", "{bad}/config_engine_key.yaml"],
     ["config_engine_key.yaml:4", "backnd", "backend"], None),
    ("config-missing-file", ["revise", "--config", "{bad}/no_such_config.yaml"], ["no_such_config.yaml"], None),
    ("config-sft-wrong-type", ["sft", "--config", "{bad}/config_sft_bad_lr.yaml"],
     ["config_sft_bad_lr.yaml:3", "learning_rate", "fast"], None),
    ("config-ppo-unknown-key", ["ppo", "--config", "{bad}/config_ppo_unknown.yaml"],
     ["config_ppo_unknown.yaml:3", "kl_coeff", "kl_coef"], None),
    # --- model folders ---
    ("model-missing-tokenizer", revise("--model", "{model}"), ["{model}", "tokenizer"], "no_tokenizer"),
    ("model-truncated-safetensors", revise("--model", "{model}"), ["model.safetensors", "truncated"], "truncated"),
    ("model-missing-config", revise("--model", "{model}"), ["{model}", "config.json"], "no_config"),
    ("model-no-weights", revise("--model", "{model}"), ["{model}", "safetensors"], "no_weights"),
    ("model-bad-config-json", revise("--model", "{model}"), ["config.json"], "bad_config"),
    ("model-truncated-for-sft", ["sft", "--data", "{bad}/sft_no_messages.jsonl", "--model", "{model}", "--out",
                                 "{out}"], ["model.safetensors", "truncated"], "truncated"),
    ("model-missing-folder", revise("--model", "{bad}/no_such_model"), ["no_such_model"], None),
    # --- where the output goes ---
    ("out-under-a-file", revise("--out", "{bad}/prompts_ok.jsonl/run"), ["prompts_ok.jsonl/run"], None),
    ("out-sft-under-a-file", ["sft", "--data", "{bad}/sft_no_messages.jsonl", "--out", "{bad}/prompts_ok.jsonl/run"],
     ["prompts_ok.jsonl/run"], None),
    ("out-disk-full", revise("--out", "{full}/run"), ["run", "No space left"], "full_disk"),
]


def model_folder(tmp: Path, kind: str) -> Path:
    """A copy of the default model's folder with one thing broken (weights symlinked, not copied)."""
    from cai import models

    src = Path(models.resolve("default", prepare=False))
    dst = tmp / f"model_{kind}"
    dst.mkdir()
    for f in src.iterdir():
        if f.suffix == ".safetensors":
            if kind == "truncated":
                with f.open("rb") as a, (dst / f.name).open("wb") as b:
                    b.write(a.read(f.stat().st_size // 3))
            elif kind != "no_weights":
                (dst / f.name).symlink_to(f)
        elif not (kind == "no_tokenizer" and f.name.startswith(("tokenizer", "vocab", "merges", "special_tokens"))):
            shutil.copy(f, dst / f.name)
    if kind == "no_config":
        (dst / "config.json").unlink()
    if kind == "bad_config":
        (dst / "config.json").write_text('{"model_type": "llama",\n "hidden_size": }\n')
    return dst


def full_disk(tmp: Path) -> Path:
    """A 64 KiB tmpfs, filled up (we run as root in CI; elsewhere the case is skipped)."""
    mnt = tmp / "full"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tiny tmpfs here: {r.stderr.decode().strip()}")
    (mnt / "run").mkdir()
    (mnt / "run" / "summary.json").write_text('{"note": "written before the disk filled"}\n')
    with (mnt / "filler").open("wb") as f:
        try:
            f.write(b"\0" * (1 << 20))
        except OSError:
            pass
    return mnt


def hf_dataset(tmp: Path) -> Path:
    import datasets

    path = tmp / "dataset"
    datasets.DatasetDict({"train": datasets.Dataset.from_list([{"prompt": "Name a color."}])}).save_to_disk(path)
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case, argv, names, setup", CASES, ids=[c[0] for c in CASES])
def test_bad_input(tmp_path, case, argv, names, setup):
    subs = {"bad": str(BAD), "out": str(tmp_path / "out")}
    # Output written by an earlier run, which the failed run must leave byte for byte.
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "summary.json").write_text('{"note": "from an earlier run"}\n')
    # What a resumed run could damage: its config, its inputs and its records.
    (tmp_path / "out" / "config.yaml").write_text("note: from an earlier run\n")
    (tmp_path / "out" / "inputs.json").write_text('{"note": "from an earlier run"}\n')
    (tmp_path / "out" / "records.jsonl").write_text('{"id": "earlier", "key": "k"}\n')
    if setup == "dataset":
        subs["dataset"] = str(hf_dataset(tmp_path))
    elif setup == "full_disk":
        subs["full"] = str(full_disk(tmp_path))
    elif setup:
        subs["model"] = str(model_folder(tmp_path, setup))
    watched = Path(subs.get("full", tmp_path / "x")) / "run" if setup == "full_disk" else tmp_path / "out"
    before = snapshot(watched)
    try:
        r = subprocess.run([sys.executable, "-m", "cai", *[a.format(**subs) for a in argv]], capture_output=True,
                           text=True, timeout=300, cwd=tmp_path,
                           env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "COLUMNS": "300"})
        after = {k: v for k, v in snapshot(watched).items() if k in before}
    finally:
        if setup == "full_disk":
            subprocess.run(["umount", subs["full"]], check=False)
    shown = r.stdout + r.stderr
    assert r.returncode == 1, shown
    assert "Traceback" not in shown, shown
    lines = r.stderr.splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith("Error:")]
    assert len(errors) == 1, shown
    # The Error line names the file; its block (the indented lines under it) names the line or
    # record and the value, and says how to fix it.
    assert Path(names[0].format(**subs).split(":")[0]).name in lines[errors[0]], shown
    block = "\n".join(lines[errors[0]:])
    for name in names:
        assert name.format(**subs) in block, shown
    assert "fix:" in block, shown
    assert after == before, "output written earlier was changed"
