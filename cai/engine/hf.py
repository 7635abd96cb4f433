"""The transformers backend: plain `generate` with left padding, for machines without vLLM and
for PPO rollouts from the policy being trained (`HFEngine.from_model`)."""

from __future__ import annotations

import torch

from cai.config import EngineConfig
from cai.engine import tokens
from cai.engine.base import Completion, Engine, Prompt, Rendered, Sampling, request_seeds
from cai.errors import EngineError


class HFEngine(tokens.TokenizerMixin, Engine):
    def __init__(self, model, tokenizer, model_name: str, max_model_len: int = 2048, batch_size: int = 32):
        self.model = model
        self.tokenizer = tokenizer
        self.model_name = model_name
        self._max_model_len = max_model_len
        self.batch_size = batch_size
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    @classmethod
    def load(cls, model_path: str, cfg: EngineConfig, model_name: str | None = None) -> HFEngine:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        dtype = {"auto": torch.float32, "float32": torch.float32, "bfloat16": torch.bfloat16,
                 "float16": torch.float16}.get(cfg.dtype)
        if dtype is None:
            raise EngineError(f"unknown dtype {cfg.dtype!r}", fix="use auto, float32, bfloat16 or float16")
        tok = AutoTokenizer.from_pretrained(model_path, trust_remote_code=cfg.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype,
                                                     trust_remote_code=cfg.trust_remote_code)
        model.eval()
        if torch.cuda.is_available():
            model.to("cuda")
        return cls(model, tok, model_name or model_path, cfg.max_model_len, cfg.hf_batch_size)

    @classmethod
    def from_model(cls, model, tokenizer, model_name: str = "policy", max_model_len: int = 2048,
                   batch_size: int = 32) -> HFEngine:
        """Wrap a model already in memory (the PPO policy being trained)."""
        return cls(model, tokenizer, model_name, max_model_len, batch_size)

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def generate(self, prompts: list[Prompt], sampling: Sampling,
                 seeds: list[int] | None = None) -> list[Completion]:
        ids = [tokens.prompt_ids(self.tokenizer, p) for p in prompts]
        for i, x in enumerate(ids):
            if len(x) + 1 > self.max_model_len:
                raise EngineError(f"prompt {i} has {len(x)} tokens, more than max_model_len={self.max_model_len}",
                                  fix="shorten the prompt or raise --max-model-len")
        results: list[Completion] = []
        eos = self._eos_ids()
        all_seeds = request_seeds(sampling, len(ids), seeds)
        for start in range(0, len(ids), self.batch_size):
            batch = ids[start : start + self.batch_size]
            if all_seeds[start] is not None:
                # Batched HF sampling cannot seed each prompt alone: the batch takes its first
                # prompt's seed (reproducible for the same batches; vLLM seeds per prompt).
                torch.manual_seed(all_seeds[start])
            input_ids, attn = self._left_pad(batch)
            do_sample = sampling.temperature > 0
            kwargs = dict(do_sample=do_sample, max_new_tokens=sampling.max_tokens,
                          num_return_sequences=sampling.n, pad_token_id=self.tokenizer.pad_token_id,
                          eos_token_id=eos, output_scores=sampling.logprobs, return_dict_in_generate=True)
            if do_sample:
                kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
            if sampling.stop:
                kwargs.update(stop_strings=list(sampling.stop), tokenizer=self.tokenizer)
            out = self.model.generate(input_ids=input_ids, attention_mask=attn, **kwargs)
            new = out.sequences[:, input_ids.shape[1] :]
            step_lp = None
            if sampling.logprobs:
                # Log-probs of the sampled tokens under the (temperature-scaled) sampling distribution.
                logits = torch.stack(out.scores, dim=1).float()
                step_lp = torch.log_softmax(logits, -1).gather(-1, new[:, : logits.shape[1]].unsqueeze(-1)).squeeze(-1)
            for row in range(new.shape[0]):
                results.append(self._completion(new[row].tolist(), len(batch[row // sampling.n]), sampling,
                                                None if step_lp is None else step_lp[row].tolist()))
        return results

    def _eos_ids(self) -> list[int]:
        eos = self.model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in eos:
            eos.append(self.tokenizer.eos_token_id)
        return eos

    def _completion(self, new_ids: list[int], n_prompt: int, sampling: Sampling, lps) -> Completion:
        eos = set(self._eos_ids())
        finish = "length"
        cut = len(new_ids)
        for k, t in enumerate(new_ids):
            if t in eos:
                cut, finish = k, "stop"
                break
        # Keep the EOS token in token_ids (PPO scores it) but not in the text.
        kept = new_ids[: cut + 1] if finish == "stop" else new_ids[:cut]
        text = self.tokenizer.decode(new_ids[:cut], skip_special_tokens=True)
        for s in sampling.stop:
            pos = text.find(s)
            if pos >= 0:
                text, finish = text[:pos], "stop"
        return Completion(text=text, prompt_tokens=n_prompt, completion_tokens=len(kept), finish_reason=finish,
                          token_ids=tuple(kept), logprobs=None if lps is None else tuple(lps[: len(kept)]))

    def _left_pad(self, batch: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(x) for x in batch)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        attn = torch.zeros((len(batch), width), dtype=torch.long)
        for i, x in enumerate(batch):
            input_ids[i, width - len(x) :] = torch.tensor(x)
            attn[i, width - len(x) :] = 1
        return input_ids.to(self.device), attn.to(self.device)

    @torch.no_grad()
    def option_logprobs(self, prompts: list[Rendered | str], options: list[str]) -> list[list[float]]:
        prompt_ids, option_ids = tokens.option_sequences(self.tokenizer, prompts, options)
        seqs, spans = [], []
        for p in prompt_ids:
            for o in option_ids:
                seqs.append(p + o)
                spans.append((len(p), len(p) + len(o)))
        flat: list[float] = []
        for start in range(0, len(seqs), self.batch_size):
            batch, bspans = seqs[start : start + self.batch_size], spans[start : start + self.batch_size]
            input_ids, attn = self._left_pad(batch)
            logits = self.model(input_ids=input_ids, attention_mask=attn).logits.float()
            logp = torch.log_softmax(logits, dim=-1)
            width = input_ids.shape[1]
            for row, (seq, (a, b)) in enumerate(zip(batch, bspans, strict=True)):
                off = width - len(seq)  # left padding shifts every position
                pos = torch.arange(a, b, device=logp.device)
                # The token at position k is predicted by the logits at position k-1.
                tok = torch.tensor(seq[a:b], device=logp.device)
                flat.append(float(logp[row, off + pos - 1, tok].sum()))
        k = len(options)
        return [flat[i * k : (i + 1) * k] for i in range(len(prompts))]
