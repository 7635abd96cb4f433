"""`cai ppo`: rollout layout and forward passes under padding, the engine/trainer log-prob check,
timeouts, config and CLI, the loop's guard rails and exact resume (on a tiny random model), and
on the default model: a full PPO run that raises the held-out reward of a reward model trained
with `cai rm` on a synthetic preference, and the vLLM weight-reload path."""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import make_tiny_model, write_jsonl
from typer.testing import CliRunner

from cai.cli import app
from cai.engine.base import Completion, Engine, Sampling
from cai.engine.deadline import call_with_timeout
from cai.engine.fake import FakeEngine
from cai.errors import ConfigError, EngineError, ResumeError
from cai.ppo import LengthDriftWarning, PPOConfig, TrainingStopped, train_ppo
from cai.rollout import (
    compare_logprobs,
    layout,
    prompt_ids,
    response_logprobs,
    response_values,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # one intra-op thread (conftest.py says why)


# --- a tiny random policy and reward model with the default model's tokenizer -----------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, default_model_path) -> dict[str, str]:
    """{"policy": folder, "rm": folder}: 2-layer random Llamas, fast enough to run the whole
    loop in seconds. The reward model is saved through cai's RewardModel (gain 1, bias 0)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from cai.reward import RewardModel

    root = tmp_path_factory.mktemp("tiny-ppo")
    policy = make_tiny_model(root / "policy", default_model_path)
    torch.manual_seed(1)
    rm = AutoModelForSequenceClassification.from_pretrained(policy, num_labels=1)
    RewardModel(rm, AutoTokenizer.from_pretrained(policy), max_length=256).save(root / "rm")
    return {"policy": policy, "rm": str(root / "rm")}


def tiny_prompts(tmp_path: Path, n: int = 4, name: str = "prompts.jsonl") -> str:
    return str(write_jsonl(tmp_path / name, [{"id": f"q{i}", "prompt": f"Question {i}: name a colour."}
                                             for i in range(n)]))


def tiny_config(tiny: dict[str, str], tmp_path: Path, **kw) -> PPOConfig:
    base = dict(policy=tiny["policy"], reward_model=tiny["rm"], prompts=tiny_prompts(tmp_path),
                out=str(tmp_path / "out"), max_new_tokens=6, steps=2, batch_size=4, num_minibatches=2,
                ppo_epochs=2, learning_rate=1e-3, sample_every=1, num_samples=2, checkpoint_every=1)
    return PPOConfig(**{**base, **kw})


# --- layout and trainer-side forward passes ----------------------------------------------------


def completion(ids: list[int], finish: str = "stop", lps: list[float] | None = None) -> Completion:
    return Completion(text="x", prompt_tokens=0, completion_tokens=len(ids), finish_reason=finish,
                      token_ids=tuple(ids), logprobs=None if lps is None else tuple(lps))


def test_layout_left_pads_prompts_and_right_pads_responses():
    b = layout([[5, 6, 7], [8]], [completion([1, 2]), completion([3, 4, 9], "length")], pad_id=0)
    assert b.query_width == 3
    assert b.input_ids.tolist() == [[5, 6, 7, 1, 2, 0], [0, 0, 8, 3, 4, 9]]
    assert b.attention_mask.tolist() == [[1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]]
    assert b.response_mask.tolist() == [[1, 1, 0], [1, 1, 1]]
    assert b.ended_with_eos.tolist() == [True, False]
    assert b.select([1]).input_ids.tolist() == [[0, 0, 8, 3, 4, 9]]


def test_logprobs_and_values_under_padding_equal_unpadded_rows(tiny):
    """Left padding, position ids and masks: each row of a padded batch scores exactly as the
    same row alone without any padding."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny["policy"])
    policy = AutoModelForCausalLM.from_pretrained(tiny["policy"]).eval()
    value = AutoModelForSequenceClassification.from_pretrained(tiny["rm"]).eval()
    convs = [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "A much longer question, "
                                                                               "with many more tokens in it?"}]]
    queries = [prompt_ids(tok, c) for c in convs]
    responses = [[100, 200, 300, 2], [400, 500]]
    batch = layout(queries, [completion(r) for r in responses], tok.pad_token_id)
    with torch.no_grad():
        lp, _ = response_logprobs(policy, batch, temperature=0.7)
        values = response_values(value, batch)
        for i, (q, r) in enumerate(zip(queries, responses, strict=True)):
            ids = torch.tensor([q + r])
            logits = policy(input_ids=ids).logits[0, len(q) - 1:-1].float()
            want = torch.log_softmax(logits / 0.7, -1).gather(-1, torch.tensor(r)[:, None]).squeeze(-1)
            torch.testing.assert_close(lp[i, :len(r)], want, atol=1e-5, rtol=1e-5)
            assert lp[i, len(r):].abs().sum() == 0
            hidden = value.model(input_ids=ids).last_hidden_state
            want_v = value.score(hidden[0, len(q) - 1:-1]).squeeze(-1)
            torch.testing.assert_close(values[i, :len(r)], want_v, atol=1e-5, rtol=1e-5)


def test_value_model_starts_at_the_reward_models_normalized_score(tiny, tmp_path):
    """The value targets are built from normalized scores (gain * raw + bias), so the value
    model, initialized from the reward model, must start in those units: its head folds in the
    gain and bias of cai_reward.json, and the value read at a sequence's last token is the
    reward model's score, not its raw output."""
    from transformers import AutoTokenizer

    from cai.ppo_models import load_value_model
    from cai.reward import RewardModel

    source = RewardModel.load(tiny["rm"])
    RewardModel(source.model, source.tokenizer, gain=2.5, bias=-0.7, max_length=256).save(tmp_path / "rm")
    rm = RewardModel.load(tmp_path / "rm")
    value = load_value_model(str(tmp_path / "rm"), tiny["policy"], AutoTokenizer.from_pretrained(tiny["policy"]),
                             torch.device("cpu"))
    prompts = ["Name a colour.", "What is 2 + 2?", "Say hello."]
    responses = ["Blue.", "Four, of course.", "Hello there, nice to meet you!"]
    want, raw = rm.score(prompts, responses), rm.score_raw(prompts, responses)
    with torch.no_grad():
        for p, r, w in zip(prompts, responses, want, strict=True):
            hidden = value.model(input_ids=torch.tensor([rm.encode(p, r)])).last_hidden_state
            assert value.score(hidden[0, -1]).item() == pytest.approx(w, abs=1e-5)
    assert all(abs(w - r) > 0.1 for w, r in zip(want, raw, strict=True))  # the raw score would be wrong


def test_compare_logprobs_accepts_agreement_and_fails_loudly_beyond_tolerance():
    b = layout([[5], [6]], [completion([1, 2], lps=[-1.0, -2.0]), completion([3], lps=[-0.5])], pad_id=0)
    close = torch.tensor([[-1.0005, -2.0], [-0.5, 0.0]])
    check = compare_logprobs(b, close, tolerance=1e-3)
    assert check.tokens == 3 and check.max_abs_diff == pytest.approx(5e-4, abs=1e-6)
    far = torch.tensor([[-1.3, -2.0], [-0.5, 99.0]])  # padding (99) never counts
    with pytest.raises(EngineError, match=r"mean \|difference\| 0\.1 nats .* above the tolerance 0\.001"):
        compare_logprobs(b, far, tolerance=1e-3)
    missing = layout([[5]], [completion([1])], pad_id=0)
    with pytest.raises(EngineError, match="no log-probs"):
        compare_logprobs(missing, torch.zeros(1, 1), 1.0)


def test_reload_agreement_tells_new_weights_from_previous_under_bf16_noise():
    """The numbers the check must separate (issue 10): a bf16 engine is ~0.07 nats per token
    off the fp32 trainer, one update at the default learning rate moves ~0.05. A tolerance on
    |engine - trainer| cannot tell the two apart; the slope of the engine's change on the
    trainer's can."""
    from cai.rollout import RELOAD_MIN_AGREEMENT, reload_agreement

    gen = torch.Generator().manual_seed(0)
    shape = (16, 32)
    mask = torch.ones(shape)
    mask[::2, 20:] = 0  # ragged responses
    previous = -torch.rand(shape, generator=gen) * 4
    new = previous + torch.randn(shape, generator=gen) * 0.06  # one update
    noise = torch.randn(shape, generator=gen) * 0.09  # bf16 against fp32 (mean |.| ~ 0.07)
    fresh = reload_agreement(new + noise, previous, new, mask)
    stale = reload_agreement(previous + noise, previous, new, mask)
    assert fresh.conclusive and stale.conclusive and fresh.tokens == int(mask.sum())
    assert abs(fresh.agreement - 1) < 3 * fresh.stderr and abs(stale.agreement) < 3 * stale.stderr
    assert fresh.agreement > RELOAD_MIN_AGREEMENT > stale.agreement
    # ... while the mean |engine - trainer| is about the same either way: no tolerance separates them.
    m = mask.bool()
    assert abs(float((new + noise - new).abs()[m].mean()) - float((previous + noise - new).abs()[m].mean())) < 0.03
    # An update that changed nothing cannot be checked: the check abstains instead of guessing.
    assert not reload_agreement(previous + noise, previous, previous, mask).conclusive


class OwnWeightsEngine(Engine):
    """Like vLLM, an engine with its own copy of the policy: rollouts sample from the copy,
    `load_weights` replaces it (or, when `broken`, silently keeps the previous weights) and
    `probe_logprobs` scores with it."""

    model_name = "own weights"

    def __init__(self, policy_path: str, broken: bool = False):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from cai.engine.hf import HFEngine

        self.model = AutoModelForCausalLM.from_pretrained(policy_path).eval()
        self.model.generation_config.repetition_penalty = 1.0
        self.hf = HFEngine.from_model(self.model, AutoTokenizer.from_pretrained(policy_path))
        self.broken, self.loads = broken, 0

    def generate(self, prompts, sampling: Sampling, seeds=None):
        return self.hf.generate(prompts, sampling, seeds)

    def load_weights(self, named_tensors) -> None:
        self.loads += 1
        if not self.broken:
            self.model.load_state_dict(dict(named_tensors))

    @torch.no_grad()
    def probe_logprobs(self, sequences, starts):
        out = []
        for seq, start in zip(sequences, starts, strict=True):
            logits = self.model(input_ids=torch.tensor([seq])).logits[0, start - 1:-1].float()
            wanted = torch.tensor(seq[start:])[:, None]
            out.append(torch.log_softmax(logits, -1).gather(-1, wanted).squeeze(-1).tolist())
        return out

    def option_logprobs(self, prompts, options):
        raise NotImplementedError

    def render(self, conversation, add_generation_prompt=True):
        return self.hf.render(conversation, add_generation_prompt)

    def count_tokens(self, texts):
        return self.hf.count_tokens(texts)

    @property
    def max_model_len(self):
        return 2048


@pytest.mark.parametrize("broken", [False, True])
def test_a_reload_that_did_not_take_stops_the_run(tiny, tmp_path, broken):
    """The loop checks every reload: a working one logs an agreement of ~1; one that leaves the
    previous weights in the engine stops the run right after it, before any rollout from them."""
    engine = OwnWeightsEngine(tiny["policy"], broken=broken)
    cfg = tiny_config(tiny, tmp_path, temperature=1.0, steps=2, checkpoint_every=0)  # raw log-probs, as vLLM's
    if broken:
        with pytest.raises(EngineError, match=r"the weight reload did not take: .* moved -?0\.0\d \(\+- "):
            train_ppo(cfg, progress=False, rollout_engine=engine)
        assert engine.loads == 2  # the sync at the start, then the first update's
        return
    train_ppo(cfg, progress=False, rollout_engine=engine)
    rows = metric_rows(tmp_path / "out")
    assert all(r["engine/reload_agreement"] == pytest.approx(1.0, abs=1e-3) for r in rows), rows


class FullContextEngine(OwnWeightsEngine):
    """An engine whose context is exactly max_prompt_tokens + max_new_tokens (the config allows
    it) and which, like vLLM, refuses a probe sequence that leaves no room for one more token."""

    def __init__(self, policy_path: str, max_len: int):
        super().__init__(policy_path)
        self.max_len, self.probed = max_len, []

    def probe_logprobs(self, sequences, starts):
        for i, seq in enumerate(sequences):
            if len(seq) + 1 > self.max_len:
                raise EngineError(f"prompt {i} has {len(seq)} tokens, more than max_model_len={self.max_len} allows")
        self.probed.extend(len(s) for s in sequences)
        return super().probe_logprobs(sequences, starts)

    @property
    def max_model_len(self):
        return self.max_len


def test_the_reload_probe_leaves_out_sequences_that_fill_the_engine_context(tiny, tmp_path):
    """A prompt of max_prompt_tokens with a response cut at max_new_tokens fills a context of
    their sum; the engine cannot score it (vLLM needs room for one generated token), so the probe
    must leave it out instead of stopping the run after a good update."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny["policy"])
    rows = [{"id": f"q{i}", "prompt": "Question: name a colour." if i % 2 else "Name one colour, please, now."}
            for i in range(4)]
    lengths = [len(prompt_ids(tok, [{"role": "user", "content": r["prompt"]}])) for r in rows]
    assert min(lengths) < max(lengths)  # some probe rows stay below the limit
    new = 6
    engine = FullContextEngine(tiny["policy"], max(lengths) + new)
    engine.model.generation_config.eos_token_id = None  # every response runs to max_new_tokens
    cfg = tiny_config(tiny, tmp_path, temperature=1.0, steps=1, checkpoint_every=0, max_new_tokens=new,
                      max_prompt_tokens=max(lengths), prompts=str(write_jsonl(tmp_path / "full.jsonl", rows)))
    train_ppo(cfg, progress=False, rollout_engine=engine)
    assert engine.probed and max(engine.probed) < engine.max_len
    assert metric_rows(tmp_path / "out")[0]["engine/reload_agreement"] == pytest.approx(1.0, abs=1e-3)


def test_a_reward_model_folder_without_its_normalization_is_a_typed_error(tiny, tmp_path):
    """The value model reads the gain and bias of cai_reward.json; a folder without it (a plain
    transformers model) must be the same located ModelNotFoundError the reward model gives."""
    from cai.errors import ModelNotFoundError

    cfg = tiny_config(tiny, tmp_path, reward_model=tiny["policy"])
    with pytest.raises(ModelNotFoundError, match="is not a cai reward model"):
        train_ppo(cfg, progress=False)


def test_call_with_timeout_returns_reraises_and_never_hangs():
    assert call_with_timeout(lambda: 42, 5, "nothing") == 42
    with pytest.raises(KeyError):
        call_with_timeout(lambda: {}["x"], 5, "a lookup")
    t0 = time.perf_counter()
    with pytest.raises(EngineError, match=r"did not finish generating 3 rollouts within 0\.2 s"):
        call_with_timeout(lambda: time.sleep(30), 0.2, "generating 3 rollouts")
    assert time.perf_counter() - t0 < 5
    # A deadline that catches `except Exception` inside the engine is still a deadline.
    def swallowing():
        for _ in range(300):
            try:
                time.sleep(0.1)
            except Exception:
                pass

    with pytest.raises(EngineError, match="within 0.2 s"):
        call_with_timeout(swallowing, 0.2, "a stubborn call")
    assert time.perf_counter() - t0 < 10


def test_call_with_timeout_off_the_main_thread_uses_a_watchdog_thread():
    import threading

    box = {}

    def worker():
        try:
            call_with_timeout(lambda: time.sleep(30), 0.2, "loading weights")
        except EngineError as e:
            box["error"] = str(e)
        box["ok"] = call_with_timeout(lambda: "fine", 5, "nothing")

    t = threading.Thread(target=worker)
    t.start()
    t.join(10)
    assert "did not finish loading weights within 0.2 s" in box["error"] and box["ok"] == "fine"


# --- config and CLI -----------------------------------------------------------------------------


@pytest.mark.parametrize("kw,match", [
    ({"reward_model": None}, "reward: rm needs a reward model"),
    ({"reward": "judge"}, "reward: judge uses no reward model"),
    ({"batch_size": 6, "num_minibatches": 4}, "batch_size 6 is not divisible by num_minibatches 4"),
    ({"gradient_accumulation_steps": 3}, r"minibatch_size 2 \(batch_size / num_minibatches\) is not divisible by "
                                         "gradient_accumulation_steps 3"),
    ({"temperature": 0.0}, "temperature must be > 0"),
    ({"cliprange": 1.5}, "cliprange must be in"),
    ({"steps": 0}, "steps must be >= 1"),
])
def test_config_rejects_bad_values(kw, match):
    base = dict(prompts="p.jsonl", out="o", reward_model="rm", batch_size=4, num_minibatches=2)
    with pytest.raises(ConfigError, match=match):
        PPOConfig(**{**base, **kw})


def test_config_rejects_a_rollout_engine_for_another_model():
    from cai.config import EngineConfig

    with pytest.raises(ConfigError, match="rollouts always come from the policy"):
        PPOConfig(prompts="p", out="o", reward_model="rm", rollout_engine=EngineConfig(backend="vllm", model="x"))


def test_yaml_below_flags_and_partial_engine_sections_keep_ppo_defaults(tmp_path):
    from cai.cli.ppo import resolve_config

    f = tmp_path / "ppo.yaml"
    f.write_text(yaml.safe_dump({"prompts": "p.jsonl", "out": "o", "reward_model": "rm", "kl_coef": 0.1,
                                 "steps": 7, "rollout_engine": {"dtype": "float32"}}))
    cfg = resolve_config(f, {"kl_coef": 0.2, "learning_rate": None, "rollout_max_model_len": 1024})
    assert (cfg.kl_coef, cfg.steps, cfg.learning_rate) == (0.2, 7, 3e-6)  # flag > YAML > default
    # A partial section fills in from PPOConfig's default (hf rollouts), not EngineConfig's (vllm).
    assert (cfg.rollout_engine.backend, cfg.rollout_engine.dtype, cfg.rollout_engine.max_model_len) == \
        ("hf", "float32", 1024)
    cfg = resolve_config(None, {"prompts": "p", "out": "o", "reward_model": "rm", "rollout_backend": "vllm"})
    assert cfg.rollout_engine.backend == "vllm" and cfg.rollout_engine.dtype == "auto"


def test_cli_help_lists_the_config_fields():
    r = CliRunner().invoke(app, ["ppo", "--help"], env={"COLUMNS": "250"})
    assert r.exit_code == 0
    for flag in ("--policy", "--reward-model", "--prompts", "--out", "--config", "--kl-control", "--max-kl",
                 "--rollout-backend", "--reward", "--missing-eos-penalty", "--length-drift-warn"):
        assert flag in r.output


def test_docs_describe_every_config_field():
    import dataclasses

    text = (Path(__file__).resolve().parent.parent / "docs" / "ppo.md").read_text()
    missing = [f.name for f in dataclasses.fields(PPOConfig) if f"`{f.name}`" not in text]
    assert not missing, f"docs/ppo.md does not mention: {missing}"


def test_cli_errors_are_typed_and_name_the_fix(tmp_path):
    r = CliRunner().invoke(app, ["ppo", "--prompts", "p.jsonl", "--out", str(tmp_path / "o")])
    assert isinstance(r.exception, ConfigError)
    assert "reward: rm needs a reward model" in str(r.exception) and "--reward-model" in str(r.exception)


# --- the loop on a tiny random model -------------------------------------------------------------


def metric_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


STABLE_NAMES = ["objective/reward", "objective/kl", "objective/entropy", "losses/policy", "losses/value",
                "policy/clipfrac", "policy/approx_kl", "response/length", "time/rollout", "time/scoring",
                "time/training"]


def test_cli_run_writes_model_metrics_samples_tensorboard_and_config(tiny, tmp_path):
    out = tmp_path / "out"
    f = tmp_path / "ppo.yaml"
    f.write_text(yaml.safe_dump({"policy": tiny["policy"], "reward_model": tiny["rm"], "steps": 2,
                                 "batch_size": 4, "num_minibatches": 2, "ppo_epochs": 2, "max_new_tokens": 6,
                                 "kl_coef": 0.3, "kl_control": "fixed", "sample_every": 1, "num_samples": 2,
                                 "checkpoint_every": 1, "eval_prompts": tiny_prompts(tmp_path, 2, "eval.jsonl")}))
    r = CliRunner().invoke(app, ["ppo", "--config", str(f), "--prompts", tiny_prompts(tmp_path), "--out", str(out),
                                 "--kl-control", "adaptive", "--quiet"])
    assert r.exit_code == 0, r.output
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["kl_control"] == "adaptive" and saved["kl_coef"] == 0.3  # flag beat YAML; YAML kept
    rows = metric_rows(out)
    assert [row["step"] for row in rows] == [0, 1, 2, 2]  # eval before, 2 steps, eval after
    for name in STABLE_NAMES:
        assert all(name in row for row in rows[1:3]), name
    assert rows[1]["objective/kl"] == pytest.approx(0.0, abs=1e-4)  # the first rollout is the reference's
    assert rows[2]["objective/kl_coef"] != rows[1]["objective/kl_coef"]  # adaptive beta moved
    assert {"eval/reward", "eval/kl"} <= set(rows[0])
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert [s["id"] for s in samples] == ["step-1-0", "step-1-1", "step-2-0", "step-2-1"]
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert (out / "model.safetensors").exists() and (out / "value" / "model.safetensors").exists()
    from cai.reward import RewardModel

    assert RewardModel.load(out / "value").bias != 0.0  # the value head's bias, kept beside the weights
    assert not (out / "checkpoints").exists()  # deleted once the policy is saved
    done = json.loads((out / "train_done.json").read_text())
    assert done["steps"] == 2 and done["eval_reward_start"] is not None
    # The policy actually changed, the reference (the input folder) did not.
    from safetensors.torch import load_file

    before, after = load_file(Path(tiny["policy"]) / "model.safetensors"), load_file(out / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    r = CliRunner().invoke(app, ["ppo", "--config", str(f), "--prompts", tiny_prompts(tmp_path), "--out", str(out),
                                 "--kl-control", "adaptive", "--quiet"])
    assert r.exit_code == 0 and "already finished" in r.output


def test_resume_after_ctrl_c_equals_an_uninterrupted_run(tiny, tmp_path):
    from safetensors.torch import load_file

    ref_dir, cut_dir = tmp_path / "a", tmp_path / "b"
    ref_dir.mkdir()
    cut_dir.mkdir()
    kw = dict(steps=3, checkpoint_every=0, lr_scheduler="linear", kl_control="adaptive")
    train_ppo(tiny_config(tiny, ref_dir, **kw), progress=False)

    def interrupt(step, metrics):
        if step == 2:
            raise KeyboardInterrupt

    cfg = tiny_config(tiny, cut_dir, **kw)
    with pytest.raises(KeyboardInterrupt):
        train_ppo(cfg, progress=False, on_step=interrupt)
    ckpt = cut_dir / "out" / "checkpoints" / "step-00000002"
    assert sorted(p.name for p in ckpt.iterdir()) == ["optimizers.pt", "policy.pt", "rng.pt", "schedulers.pt",
                                                    "state.json", "value.pt"]
    assert list(json.loads((ckpt / "state.json").read_text())) == [
        "step", "first_length", "length_warned", "eval_start", "tokens", "kl_controller", "n_prompts", "prompts_seen"]
    summary = train_ppo(cfg, progress=False)
    assert summary["resumed_from"] == 2 and summary["steps"] == 3

    a, b = load_file(ref_dir / "out" / "model.safetensors"), load_file(cut_dir / "out" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    va = load_file(ref_dir / "out" / "value" / "model.safetensors")
    vb = load_file(cut_dir / "out" / "value" / "model.safetensors")
    assert all(torch.equal(va[k], vb[k]) for k in va)

    def strip(rows):
        return [{k: v for k, v in row.items() if not k.startswith("time")} for row in rows]

    assert strip(metric_rows(ref_dir / "out")) == strip(metric_rows(cut_dir / "out"))


def test_snapshots_are_loadable_folders_kept_after_the_run_and_redone_past_the_checkpoint(tiny, tmp_path):
    """snapshot_every=1 over 4 steps: snapshots of steps 1-3 (step 4 is the run folder), each a
    model folder transformers loads, with the source's dropout and generation config. A run that
    crashed after step 3 (checkpoint at 2) keeps snapshots 1-2 and writes 3 again as it redoes the
    step; every snapshot equals the uninterrupted run's."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    kw = dict(steps=4, snapshot_every=1, checkpoint_every=2)
    ref_dir, cut_dir = tmp_path / "a", tmp_path / "b"
    ref_dir.mkdir()
    cut_dir.mkdir()
    summary = train_ppo(tiny_config(tiny, ref_dir, **kw), progress=False)
    snaps = ref_dir / "out" / "snapshots"
    assert summary["snapshots"] == {str(k): f"snapshots/step-{k:06d}" for k in (1, 2, 3)}
    assert sorted(p.name for p in snaps.iterdir()) == ["step-000001", "step-000002", "step-000003"]
    assert not (ref_dir / "out" / "checkpoints").exists()  # checkpoints go, snapshots stay
    one = AutoModelForCausalLM.from_pretrained(snaps / "step-000001")
    assert one.config.attention_dropout == AutoModelForCausalLM.from_pretrained(tiny["policy"]).config.attention_dropout
    assert (snaps / "step-000001" / "tokenizer_config.json").exists()
    assert (snaps / "step-000001" / "generation_config.json").exists()
    start = load_file(Path(tiny["policy"]) / "model.safetensors")
    w1, w3 = (load_file(snaps / f"step-00000{k}" / "model.safetensors") for k in (1, 3))
    final = load_file(ref_dir / "out" / "model.safetensors")
    assert any(not torch.equal(start[k], w1[k]) for k in start)  # a snapshot is the trained policy...
    assert any(not torch.equal(w3[k], final[k]) for k in w3)  # ...at its own step

    def crash(step, metrics):
        if step == 3:
            raise RuntimeError("killed")

    cfg = tiny_config(tiny, cut_dir, **kw)
    with pytest.raises(RuntimeError, match="killed"):
        train_ppo(cfg, progress=False, on_step=crash)
    second, third = (cut_dir / "out" / "snapshots" / f"step-00000{k}" / "model.safetensors" for k in (2, 3))
    written = second.stat().st_mtime_ns, third.stat().st_mtime_ns
    time.sleep(0.01)
    assert train_ppo(cfg, progress=False)["resumed_from"] == 2
    assert second.stat().st_mtime_ns == written[0] and third.stat().st_mtime_ns != written[1]
    for k in (1, 2, 3):
        a = load_file(snaps / f"step-00000{k}" / "model.safetensors")
        b = load_file(cut_dir / "out" / "snapshots" / f"step-00000{k}" / "model.safetensors")
        assert all(torch.equal(a[n], b[n]) for n in a), k


def test_a_forced_resume_with_a_new_config_redoes_the_snapshots_past_its_checkpoint(tiny, tmp_path):
    """Crashed after step 3 (checkpoint at 2, snapshots 1-3), then resumed with --force and one PPO
    epoch instead of two: steps 3-4 are trained again under the new config, so snapshot 3 must hold those
    weights, not the old run's (a snapshot kept from the old config would show --hacking a policy
    the run never passed through); snapshots 1-2, before the checkpoint, stay."""
    from safetensors.torch import load_file

    kw = dict(steps=4, snapshot_every=1, checkpoint_every=2)

    def crash(step, metrics):
        if step == 3:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        train_ppo(tiny_config(tiny, tmp_path, **kw), progress=False, on_step=crash)
    snaps = tmp_path / "out" / "snapshots"
    old = {k: load_file(snaps / f"step-00000{k}" / "model.safetensors") for k in (2, 3)}
    summary = train_ppo(tiny_config(tiny, tmp_path, ppo_epochs=1, **kw), force=True, progress=False)
    assert summary["resumed_from"] == 2 and sorted(summary["snapshots"]) == ["1", "2", "3"]
    new = {k: load_file(snaps / f"step-00000{k}" / "model.safetensors") for k in (2, 3)}
    assert all(torch.equal(old[2][n], new[2][n]) for n in old[2])
    assert any(not torch.equal(old[3][n], new[3][n]) for n in old[3])


def test_a_ctrl_c_while_a_snapshot_is_written_still_leaves_that_snapshot_after_the_resume(tiny, tmp_path, monkeypatch):
    """Ctrl-C inside the writing of snapshot 2 (its temporary folder half written): the run saves
    checkpoint 2 (the models hold step 2 exactly) and stops. The resumed run continues from step 3,
    so it must write snapshot 2 from the resumed weights first, equal to an uninterrupted run's."""
    from safetensors.torch import load_file

    import cai.ppo
    from cai.snapshots import save_snapshot

    kw = dict(steps=3, snapshot_every=1, checkpoint_every=0)
    ref_dir, cut_dir = tmp_path / "a", tmp_path / "b"
    ref_dir.mkdir()
    cut_dir.mkdir()
    train_ppo(tiny_config(tiny, ref_dir, **kw), progress=False)

    def interrupted(out, step, policy, *args):
        if step == 2:
            (Path(out) / "snapshots" / ".step-000002.tmp").mkdir(parents=True)
            raise KeyboardInterrupt
        return save_snapshot(out, step, policy, *args)

    monkeypatch.setattr(cai.ppo, "save_snapshot", interrupted)
    cfg = tiny_config(tiny, cut_dir, **kw)
    with pytest.raises(KeyboardInterrupt):
        train_ppo(cfg, progress=False)
    assert (cut_dir / "out" / "checkpoints" / "step-00000002").is_dir()
    monkeypatch.setattr(cai.ppo, "save_snapshot", save_snapshot)
    summary = train_ppo(cfg, progress=False)
    assert summary["resumed_from"] == 2 and sorted(summary["snapshots"]) == ["1", "2"]
    a, b = (load_file(d / "out" / "snapshots" / "step-000002" / "model.safetensors") for d in (ref_dir, cut_dir))
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_without_snapshot_every_a_run_writes_no_snapshots(tiny, tmp_path):
    summary = train_ppo(tiny_config(tiny, tmp_path, steps=1), progress=False)
    assert not (tmp_path / "out" / "snapshots").exists() and "snapshots" not in summary
    assert summary["device"] == "cpu" and summary["response_tokens"] > 0


def test_kl_past_the_bound_stops_with_a_checkpoint(tiny, tmp_path):
    cfg = tiny_config(tiny, tmp_path, steps=4, max_kl=1e-3, learning_rate=3e-2, checkpoint_every=0)
    with pytest.raises(TrainingStopped, match=r"past max_kl=0\.001: the policy has drifted") as e:
        train_ppo(cfg, progress=False)
    assert "kl_coef" in e.value.fix
    assert list((tmp_path / "out" / "checkpoints").glob("step-*/state.json"))


def test_nan_loss_stops_before_the_update_is_applied(tiny, tmp_path):
    cfg = tiny_config(tiny, tmp_path, steps=2, learning_rate=1e30, max_grad_norm=0.0, max_kl=0.0)
    with pytest.raises(TrainingStopped, match=r"losses/(policy|value) became nan at step \d, epoch \d, minibatch \d"):
        train_ppo(cfg, progress=False)


class ScriptedEngine(Engine):
    """Answers with random token ids of a scripted length per call (the first call: lengths[0],
    ...), ending in EOS: a policy whose response length drifts on cue."""

    model_name = "scripted"

    def __init__(self, tokenizer, lengths: list[int]):
        self.tokenizer, self.lengths, self.calls = tokenizer, lengths, 0

    def generate(self, prompts, sampling: Sampling, seeds=None):
        n = self.lengths[min(self.calls, len(self.lengths) - 1)]
        self.calls += 1
        out = []
        for i in range(len(prompts)):
            rng = random.Random(seeds[i])
            ids = [rng.randrange(100, 5000) for _ in range(n)] + [self.tokenizer.eos_token_id]
            out.append(Completion(self.tokenizer.decode(ids[:-1]), 0, len(ids), "stop", tuple(ids)))
        return out

    def option_logprobs(self, prompts, options):
        raise NotImplementedError

    def render(self, conversation, add_generation_prompt=True):
        return self.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)

    def count_tokens(self, texts):
        return [len(self.tokenizer(t)["input_ids"]) for t in texts]

    @property
    def max_model_len(self):
        return 2048


def test_length_drift_warns_once(tiny, tmp_path):
    from transformers import AutoTokenizer

    engine = ScriptedEngine(AutoTokenizer.from_pretrained(tiny["policy"]), lengths=[4, 4, 9, 9])
    cfg = tiny_config(tiny, tmp_path, steps=4, length_drift_warn=0.5, max_new_tokens=16, checkpoint_every=0)
    with pytest.warns(LengthDriftWarning, match=r"step 3: the mean response length is 10\.0 tokens, \+100%") as w:
        train_ppo(cfg, progress=False, rollout_engine=engine)
    assert sum(issubclass(x.category, LengthDriftWarning) for x in w) == 1
    assert [row["response/length"] for row in metric_rows(tmp_path / "out")] == [5.0, 5.0, 10.0, 10.0]


def test_judge_reward_is_direct_rlaif(tiny, tmp_path):
    """--reward judge: the judge's probability-weighted 1-10 score, rescaled to [-1, 1], is the
    reward; no reward model; the value model starts from the policy with values 0."""
    # The scripted judge puts all its mass on "7": expected score 7 -> (7 - 1) / 9 * 2 - 1 = 1/3.
    judge = FakeEngine(score=lambda prompt, option: 0.0 if option == "7" else -30.0)
    cfg = tiny_config(tiny, tmp_path, reward="judge", reward_model=None, steps=1, missing_eos_penalty=None)
    train_ppo(cfg, progress=False, judge_engine=judge)
    row = metric_rows(tmp_path / "out")[0]
    assert row["objective/score"] == pytest.approx(1 / 3, abs=1e-3)
    assert row["value/mean"] == 0.0
    assert any(c[0] == "option_logprobs" for c in judge.calls)


# --- the default model ---------------------------------------------------------------------------

# A learnable synthetic preference whose property can be counted: a polite closing line. The task,
# the reward model (trained with cai's rm API) and the PPO run are scripts/ppo_learns.py's, which
# also prints the curve recorded in docs/ppo.md.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from ppo_learns import QA, conversation  # noqa: E402
from ppo_learns import run as run_learning_task  # noqa: E402


@pytest.mark.engine
def test_ppo_learns_a_counted_property_with_bounded_kl(tmp_path):
    """The reward model's own score (not the EOS-penalized reward, which can rise just by ending
    with EOS) and the share of held-out answers with the closing line both rise well above the
    start, and the KL stays under its bound at every evaluation and every step."""
    result = run_learning_task(tmp_path, threads=2)
    assert result["rm"]["train_accuracy"] == 1.0
    start, end = result["curve"][0], result["curve"][-1]
    assert start["step"] == 0 and end["step"] == result["ppo"]["steps"]
    assert end["score"] > start["score"] + 0.5, result["curve"]
    assert end["closing"] >= start["closing"] + 0.3, result["curve"]
    assert all(r["kl"] < result["max_kl"] for r in result["curve"]), result["curve"]
    train = [r for r in metric_rows(tmp_path / "ppo") if "objective/kl" in r]
    assert len(train) == result["ppo"]["steps"] and all(r["objective/kl"] < result["max_kl"] for r in train)


@pytest.mark.engine
def test_vllm_rollouts_reload_weights_in_place(vllm_engine, default_model_path, tiny, tmp_path):
    """PPO with the shared fp32 vLLM engine: after each update the engine gets the new weights
    (the in-loop check at step 2 compares its log-probs with the trainer's at 1e-3); afterwards
    the engine samples from the trained policy, not the original. The original weights are put
    back at the end: the engine serves the whole test session."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cai.config import EngineConfig
    from cai.rollout import sample

    tok = AutoTokenizer.from_pretrained(default_model_path)
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": f"v{i}", "prompt": conversation(q)}
                                                 for i, (q, _) in enumerate(QA[:4])])
    # The tiny random reward model shares the default tokenizer, so it can also seed the value
    # model; what it prefers does not matter here, only that the policy's weights move.
    cfg = PPOConfig(policy="default", reward_model=tiny["rm"], prompts=str(prompts), out=str(tmp_path / "out"),
                    rollout_engine=EngineConfig(backend="vllm", dtype="float32"), max_new_tokens=8, steps=2,
                    batch_size=4, num_minibatches=1, ppo_epochs=1, learning_rate=1e-4, checkpoint_every=0,
                    engine_logprob_tolerance=1e-3, engine_timeout_s=300)
    original = AutoModelForCausalLM.from_pretrained(default_model_path, dtype=torch.float32).eval()
    try:
        train_ppo(cfg, progress=False, rollout_engine=vllm_engine)
        rows = metric_rows(tmp_path / "out")
        assert all(r["engine/logprob_diff_mean"] < 1e-3 for r in rows)
        assert all(r["time/weight_sync"] > 0 for r in rows)

        trained = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
        convs = [conversation(q) for q, _ in QA[4:8]]
        sampling = Sampling(max_tokens=8, temperature=1.0, seed=None, logprobs=True)
        batch = sample(vllm_engine, tok, convs, sampling, seeds=[1, 2, 3, 4], timeout_s=120)
        with torch.no_grad():
            new_lp, _ = response_logprobs(trained, batch, 1.0)
            old_lp, _ = response_logprobs(original, batch, 1.0)
        assert compare_logprobs(batch, new_lp, 1e-3).mean_abs_diff < 1e-3  # the engine runs the new weights
        with pytest.raises(EngineError, match="not sampling from the policy being trained"):
            compare_logprobs(batch, old_lp, 1e-3)  # ...and the check would catch a stale engine
    finally:
        vllm_engine.load_weights(original.state_dict().items())
    batch = sample(vllm_engine, tok, [conversation("Say hello.")], Sampling(max_tokens=8, temperature=1.0,
                                                                             seed=None, logprobs=True),
                   seeds=[5], timeout_s=120)
    with torch.no_grad():
        lp, _ = response_logprobs(original, batch, 1.0)
    assert compare_logprobs(batch, lp, 1e-3).mean_abs_diff < 1e-3  # restored for the rest of the session



@pytest.fixture(scope="module")
def auto_dtype_engine(default_model_path):
    """A vLLM engine at the rollout engine's default dtype (auto: bfloat16 on a CPU), the case
    where one update's drift is smaller than the engine's numerical noise. A second engine
    beside the session's fp32 one, closed with this module."""
    from cai.config import EngineConfig
    from cai.engine.vllm import VLLMEngine

    engine = VLLMEngine(default_model_path, EngineConfig(backend="vllm", max_model_len=1024, seed=0),
                        model_name="default")
    yield engine
    engine.close()


@pytest.mark.engine
@pytest.mark.parametrize("broken", [True, False])  # broken first: it leaves the engine's weights as they were
def test_reload_check_at_the_default_dtype_and_learning_rate(auto_dtype_engine, tiny, tmp_path, monkeypatch, broken):
    """bf16 vLLM, default learning rate, 16 optimizer steps per update (the default count): a
    reload that did not take stops the run; one that did passes with an agreement near 1."""
    from cai.config import EngineConfig

    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": f"r{i}", "prompt": conversation(q)}
                                                 for i, (q, _) in enumerate(QA[:16])])
    cfg = PPOConfig(policy="default", reward_model=tiny["rm"], prompts=str(prompts), out=str(tmp_path / "out"),
                    rollout_engine=EngineConfig(backend="vllm", max_model_len=1024), max_new_tokens=32, steps=1,
                    batch_size=16, num_minibatches=4, checkpoint_every=0, engine_timeout_s=300)
    assert (cfg.learning_rate, cfg.ppo_epochs, cfg.logprob_tolerance) == (3e-6, 4, 0.25)  # the defaults
    if broken:
        monkeypatch.setattr(auto_dtype_engine, "load_weights", lambda named_tensors: None)
        with pytest.raises(EngineError, match="the weight reload did not take") as e:
            train_ppo(cfg, progress=False, rollout_engine=auto_dtype_engine)
        print(e.value)
        return
    train_ppo(cfg, progress=False, rollout_engine=auto_dtype_engine)
    row = metric_rows(tmp_path / "out")[0]
    print({k: v for k, v in row.items() if k.startswith("engine/")})
    assert row["engine/reload_agreement"] > 0.5 and row["engine/reload_stderr"] < 0.2, row


def test_resume_after_the_prompts_changed_in_place_is_refused(tiny, tmp_path):
    """Same path, same count, other texts: the old check (the number of prompts) let it resume
    on other data. inputs.json records a hash of the prompts as read, and the fingerprints of
    the policy and reward-model folders."""
    def interrupt(step, metrics):
        if step == 1:
            raise KeyboardInterrupt

    cfg = tiny_config(tiny, tmp_path, steps=2, checkpoint_every=0)
    with pytest.raises(KeyboardInterrupt):
        train_ppo(cfg, progress=False, on_step=interrupt)
    prompts = Path(cfg.prompts)
    prompts.write_text(prompts.read_text().replace("a", "e"))
    with pytest.raises(ResumeError, match=r"inputs\.data_hashes\.prompts: '\w+' -> '\w+'"):
        train_ppo(cfg, progress=False)


@pytest.mark.parametrize("scaling", ["std", "none"])
def test_a_value_model_that_predicts_the_returns_gives_zero_advantage_under_reward_scaling(scaling):
    """The value model lives in the reward model's units (its head starts as the RM's, with
    cai_reward.json folded in); with reward scaling its predictions must be scaled like the
    rewards before GAE, or a perfect value model would leave advantages of (1 - 1/std) * V.
    Failed before: GAE took the unscaled values against the scaled rewards."""
    from types import SimpleNamespace

    from cai.ppo import compute_advantages

    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    scores = torch.tensor([0.8, -0.5])
    lp = torch.zeros(2, 6)
    # gamma 1, no KL: the return of every token is the response's score.
    exp = SimpleNamespace(batch=SimpleNamespace(response_mask=mask), logprobs=lp, ref_logprobs=lp, scores=scores,
                          values=scores[:, None].expand(2, 6) * mask)
    cfg = PPOConfig(prompts="p", out="o", reward_model="rm", reward_scaling=scaling, gamma=1.0, lam=0.95)
    raw = {}
    import cai.ppo as ppo_mod

    real_whiten = ppo_mod.masked_whiten
    try:
        ppo_mod.masked_whiten = lambda x, m: raw.setdefault("adv", x)
        adv = compute_advantages(exp, cfg, kl_coef=0.0)
    finally:
        ppo_mod.masked_whiten = real_whiten
    torch.testing.assert_close(raw["adv"], torch.zeros(2, 6), atol=1e-6, rtol=0)
    torch.testing.assert_close(adv.returns / adv.reward_scale, exp.values, atol=1e-6, rtol=0)
    assert (float(adv.reward_scale) != 1.0) == (scaling == "std")


def test_cai_report_tells_a_real_ppo_folder_and_draws_its_four_curves(tiny, tmp_path):
    """The report's folder rule and its metric names (cai/report/curves.py) against what a real run
    writes: a PPO folder with held-out prompts is told `ppo` and draws reward, KL, length and
    entropy, each with a line per logged step."""
    from cai.report import build_report
    from cai.report.folders import kind_of

    train_ppo(tiny_config(tiny, tmp_path, steps=2, eval_prompts=tiny_prompts(tmp_path), eval_every=1),
              progress=False)
    out = tmp_path / "out"
    assert kind_of(out) == "ppo"
    page, summary = build_report([out])
    assert summary.sections == ["PPO curves"]
    for title in ("Reward", "KL to the starting policy (per response)", "Response length (tokens)",
                  "Entropy (per token)"):
        chart = page.split(f"<figcaption>{title}</figcaption>", 1)[1].split("</svg>", 1)[0]
        assert chart.count('<polyline class="mark"') >= 1, title
