"""The quiet CLI: library chatter goes to <run folder>/cai.log, cai's own lines to the terminal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from cai import terminal
from cai.cli import _hoist_verbose
from cai.records import TornTailWarning

REPO = Path(__file__).resolve().parents[1]

# A stand-in for a stage: what vLLM, torch and tqdm do (a logger printing to stdout, a C-level
# write to fd 2, a library warning), then cai's own output, all after `terminal.capture`.
STAGE = textwrap.dedent("""
    import logging, os, sys, warnings
    from cai import terminal
    terminal.enable(verbose=sys.argv[2] == "verbose")
    terminal.capture(sys.argv[1] if sys.argv[1] != "-" else None)
    log = logging.getLogger("vllm"); log.addHandler(logging.StreamHandler(sys.stdout)); log.warning("VLLM-LINE")
    os.write(2, b"TORCH-CPP-LINE\\n")
    print("PRINTED-LINE")
    warnings.warn_explicit("LIB-WARNING", FutureWarning, "/site-packages/torch/x.py", 1)
    from cai.records import TornTailWarning
    warnings.warn("CAI-WARNING", TornTailWarning)
    terminal.err.print("CAI-PROGRESS")
    print('{"report": 1}', file=terminal.out.file)
""")


def run_stage(tmp_path: Path, run_dir: str, mode: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", STAGE, run_dir, mode], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)


LIBRARY = ("VLLM-LINE", "TORCH-CPP-LINE", "PRINTED-LINE", "LIB-WARNING")


def test_quiet_run_sends_library_output_to_the_log(tmp_path):
    run = tmp_path / "run"
    r = run_stage(tmp_path, str(run), "quiet")
    assert r.returncode == 0, r.stderr
    assert r.stdout == '{"report": 1}\n'  # stdout: only cai's own output
    assert "CAI-PROGRESS" in r.stderr and "Warning: CAI-WARNING" in r.stderr
    for line in LIBRARY:
        assert line not in r.stderr
    log = (run / "cai.log").read_text()
    for line in LIBRARY:
        assert line in log
    assert "CAI-" not in log


@pytest.mark.parametrize("run_dir, mode", [("-", "quiet"), ("run", "verbose")])
def test_verbose_or_no_run_folder_shows_library_output_on_stderr(tmp_path, run_dir, mode):
    r = run_stage(tmp_path, run_dir, mode)
    assert r.returncode == 0, r.stderr
    assert r.stdout == '{"report": 1}\n'  # still clean: library stdout is sent to stderr
    for line in LIBRARY + ("CAI-PROGRESS", "Warning: CAI-WARNING"):
        assert line in r.stderr
    assert not (tmp_path / "run" / "cai.log").exists()


def test_capture_is_a_no_op_unless_the_console_script_enabled_it(tmp_path):
    # In-process callers (CliRunner tests, notebooks) keep their streams.
    assert terminal.capture(tmp_path) is None
    assert not (tmp_path / "cai.log").exists()


def test_verbose_is_accepted_anywhere():
    assert _hoist_verbose(["revise", "--prompts", "p", "--verbose"]) == (["revise", "--prompts", "p"], True)
    assert _hoist_verbose(["--verbose", "sft"]) == (["sft"], True)
    assert _hoist_verbose(["sft", "--out", "x"]) == (["sft", "--out", "x"], False)


def test_own_warnings_are_told_apart_from_library_warnings():
    assert terminal.is_own_warning(TornTailWarning, "/anywhere/x.py")
    assert terminal.is_own_warning(UserWarning, str(REPO / "cai" / "sft.py"))
    assert not terminal.is_own_warning(FutureWarning, "/venv/site-packages/torch/x.py")
    with warnings.catch_warnings():
        terminal.route_warnings()
        assert warnings.showwarning is terminal._show


def test_unwritable_run_folder_is_an_error_naming_it(tmp_path):
    (tmp_path / "afile").write_text("x")
    code = ("import sys; from cai import terminal; terminal.enable(False); "
            "from cai.errors import CaiError\ntry: terminal.capture(sys.argv[1])\n"
            "except CaiError as e: print(e)")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "afile" / "run")], capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert f"{tmp_path / 'afile' / 'run'}: cannot write to the output folder" in r.stdout
    assert "fix: choose an --out folder you can write to" in r.stdout


PAIRS = [{"prompt": "Name a color.", "chosen": "Blue.", "rejected": "I will not answer."},
         {"prompt": "What is 2+2?", "chosen": "4.", "rejected": "5."}]
VLLM_MARKS = ("WARNING", "Loading safetensors", "NUMA", "FutureWarning")


@pytest.mark.engine
def test_real_judge_eval_is_quiet_and_its_json_parses(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}

    def judge_eval(out: str, *extra: str) -> subprocess.CompletedProcess:
        r = subprocess.run([sys.executable, "-m", "cai", "judge", "eval", "--pairs", str(pairs), "--out",
                            str(tmp_path / out), "--json", *extra], capture_output=True, text=True, env=env,
                           timeout=600)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["pairs"] == 2  # stdout is the report and nothing else
        return r

    quiet = judge_eval("quiet")
    assert not [m for m in VLLM_MARKS if m in quiet.stderr], quiet.stderr
    assert len(quiet.stderr.strip().splitlines()) <= 2  # the progress bar
    log = (tmp_path / "quiet" / "cai.log").read_text()
    assert "WARNING" in log and "Loading safetensors" in log

    loud = judge_eval("loud", "--verbose")
    assert "WARNING" in loud.stderr and "Loading safetensors" in loud.stderr
    assert not (tmp_path / "loud" / "cai.log").exists()


def test_ctrl_c_in_a_stage_says_how_to_resume_on_the_terminal(tmp_path):
    # typer turns a KeyboardInterrupt inside a command into a silent exit 130: the console script
    # must still say, on the terminal (not in cai.log), that finished records are kept.
    (tmp_path / "p.jsonl").write_text('{"prompt": "hi"}\n')
    code = ("import sys, cai.cli.revise as r\n"
            "def stop(*a, **k): raise KeyboardInterrupt\n"
            "r.run_revise = stop\n"
            "sys.argv = ['cai', 'revise', '--prompts', 'p.jsonl', '--out', 'run']\n"
            "from cai.cli import main; main()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}, timeout=120)
    assert r.returncode == 130
    assert (tmp_path / "run" / "cai.log").exists()  # the stage had captured fds 1 and 2
    assert "Interrupted. Finished records are saved" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_a_bug_prints_its_traceback_unwrapped_on_the_terminal_and_in_the_log(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"prompt": "hi"}\n')
    code = ("import sys, cai.cli.revise as r\n"
            "def bug(*a, **k): raise RuntimeError('a bug ' + 'x' * 100)\n"
            "r.run_revise = bug\n"
            "sys.argv = ['cai', 'revise', '--prompts', 'p.jsonl', '--out', 'run']\n"
            "from cai.cli import main; main()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "COLUMNS": "60"})
    assert r.returncode == 1
    line = "RuntimeError: a bug " + "x" * 100
    assert line in r.stderr.splitlines()  # one line, as Python wrote it, not cut at the console width
    assert line in (tmp_path / "run" / "cai.log").read_text().splitlines()


def test_a_log_on_a_full_disk_does_not_stop_the_stage(tmp_path):
    # cai.log on a full disk (/dev/full: every write fails with ENOSPC): a library's warning,
    # print or log line must not raise inside the library; cai's own lines still show.
    run = tmp_path / "run"
    run.mkdir()
    (run / "cai.log").symlink_to("/dev/full")
    code = textwrap.dedent("""
        import logging, sys, warnings
        from cai import terminal
        terminal.enable(verbose=False)
        terminal.capture(sys.argv[1])
        warnings.warn_explicit("LIB-WARNING", FutureWarning, "/site-packages/torch/x.py", 1)
        print("LIBRARY-PRINT", flush=True)
        logging.getLogger("vllm").warning("VLLM-LINE")
        terminal.err.print("STAGE-DONE")
    """)
    r = subprocess.run([sys.executable, "-c", code, str(run)], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0 and "STAGE-DONE" in r.stderr, r.stderr


def test_training_bars_come_from_the_one_progress_factory(monkeypatch):
    # Every bar of cai is made by cai.progress.make_progress (one look, output on cai's stderr
    # console); the training bar shows samples/s and the loss in place of the token rates.
    import io

    from rich.console import Console

    from cai import progress

    made = []
    real = progress.make_progress
    monkeypatch.setattr(progress, "make_progress", lambda *a, **k: made.append(k) or real(*a, **k))
    console = Console(file=io.StringIO(), width=120, force_terminal=False)
    monkeypatch.setattr(terminal, "err", console)
    with progress.step_progress(10, 2, "cai sft", enabled=True) as update:
        update(5, 12.5, 0.25)
    assert len(made) == 1
    assert "cai sft" in console.file.getvalue() and "12.50 samples/s  loss 0.2500" in console.file.getvalue()
    with progress.step_progress(10, 0, "off", enabled=False) as update:
        update(1, 1.0, 1.0)
    assert len(made) == 1  # disabled: no bar at all
