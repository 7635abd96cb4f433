"""`cai rm`: the soft-label loss, pair reading and its errors, scoring at the last token, a
learnable synthetic preference, normalization, evaluation, scoring files, and a few real steps
on the default model."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import DATA
from helpers import write_jsonl

from cai.errors import InputError, MultiError
from cai.reward import (
    NORM_FILE,
    RewardModel,
    RMConfig,
    label_agreement,
    last_token_index,
    pad_batch,
    parse_dialogue,
    preference_loss,
    read_pairs,
    sequence_rewards,
    train_reward,
)
from cai.reward_eval import evaluate_pairs, pair_report, score_file

HH_PAIRS = DATA / "hh-rlhf-harmless-dev" / "pairs.jsonl"


pytestmark = pytest.mark.usefixtures("one_thread")  # one intra-op thread (conftest.py says why)


# --- the loss ---------------------------------------------------------------------------------


def test_soft_label_loss_equals_bradley_terry_at_p_1():
    d = torch.tensor([-5.0, -1.0, 0.0, 0.3, 2.0, 30.0])
    rc, rr = d / 2, -d / 2
    torch.testing.assert_close(preference_loss(rc, rr, torch.ones(6)), -F.logsigmoid(d))
    torch.testing.assert_close(preference_loss(rc, rr), -F.logsigmoid(d))  # no p: hard labels
    m = torch.tensor([0.0, 0.5, 1.0, 1.0, 2.0, 0.0])
    torch.testing.assert_close(preference_loss(rc, rr, torch.ones(6), m), -F.logsigmoid(d - m))  # Llama 2


@pytest.mark.parametrize("p", [0.0, 0.2, 0.5, 0.9])
def test_soft_label_loss_is_cross_entropy_minimized_at_logit_p(p):
    d = torch.tensor([0.0, 1.0, -2.0])
    pt = torch.full((3,), p)
    expected = -(p * F.logsigmoid(d) + (1 - p) * F.logsigmoid(-d))
    torch.testing.assert_close(preference_loss(d, torch.zeros(3), pt), expected)
    if 0 < p < 1:  # the loss is flat where sigmoid(r_c - r_r) = p
        x = torch.tensor([math.log(p / (1 - p))], requires_grad=True)
        preference_loss(x, torch.zeros(1), torch.tensor([p])).sum().backward()
        assert abs(x.grad.item()) < 1e-6


def test_label_agreement():
    rc = torch.tensor([1.0, 1.0, 0.0, 1.0, 2.0])
    rr = torch.tensor([0.0, 2.0, 1.0, 1.0, 0.0])
    p = torch.tensor([1.0, 1.0, 0.2, 1.0, 0.5])
    assert label_agreement(rc, rr, p).tolist() == [1.0, 0.0, 1.0, 0.5, 0.5]


# --- reading pairs ----------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: How are you?\n\nAssistant:",
     [("user", "Hi"), ("assistant", "Hello!"), ("user", "How are you?")]),
    ("Just a question?", [("user", "Just a question?")]),
    ("Be brief.\n\nHuman: Hi\n\nAssistant:", [("system", "Be brief."), ("user", "Hi")]),
    # hh-rlhf harmless-base test has a row (hh-harmless-test-1254) that writes "  Human:" without
    # the blank line: it stays inside the assistant turn, so the dialogue ends on the assistant.
    ("\n\nHuman: Are drag queens men?\n\nAssistant: No.  Human: Then how?\n\nAssistant:",
     [("user", "Are drag queens men?"), ("assistant", "No.  Human: Then how?")]),
])
def test_hh_dialogue_strings_become_conversations(text, expected):
    assert [(m["role"], m["content"]) for m in parse_dialogue(text)] == expected


def test_hh_rlhf_pairs_read_as_conversations():
    pairs = read_pairs(HH_PAIRS)  # the repository's subset: the first 256 rows (data/README.md)
    assert len(pairs) == 256 and all(pr.p == 1.0 for pr in pairs)
    assert all(pr.prompt[-1]["role"] == "user" and pr.prompt[0]["role"] == "user" for pr in pairs)
    assert pairs[0].chosen == [{"role": "assistant", "content": "I’ll give you the links."}]


def test_bad_pairs_are_reported_exactly(tmp_path):
    conv = [{"role": "user", "content": "q"}]
    f = write_jsonl(tmp_path / "cols.jsonl", [{"prompt": conv, "response": "a", "p_chosen": 1.0}])
    with pytest.raises(InputError) as e:
        read_pairs(f)
    assert str(e.value).startswith(f"1 row(s) of {f} lack required columns (prompt, chosen, rejected):\n"
                                   f"  {f}:1: missing column(s) 'chosen', 'rejected' (it has: prompt, response, "
                                   "p_chosen)")

    def row(i, chosen, rejected, **kw):
        return {"id": f"r{i}", "prompt": conv, "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}], **kw}

    f = write_jsonl(tmp_path / "same.jsonl", [row(0, "a", "b"), row(1, "same", "same"), row(2, "x", "x")])
    with pytest.raises(InputError) as e:
        read_pairs(f)
    assert str(e.value) == (f"2 row(s) have chosen equal to rejected, which teaches nothing:\n"
                            f"    {f}:2, record 'r1'\n    {f}:3, record 'r2'\n"
                            "  fix: remove these rows (the label stage never writes them)")

    f = write_jsonl(tmp_path / "p.jsonl", [row(0, "a", "b", p_chosen=1.5), row(1, "a", "b", p_chosen="high"),
                                           row(2, "a", "a")])
    with pytest.raises(MultiError) as e:
        read_pairs(f)
    text = str(e.value)
    assert text.startswith(f"3 problems in {f}:")
    assert f"{f}:1, record 'r0': p_chosen must be in [0, 1], got 1.5" in text
    assert f"{f}:2, record 'r1': column 'p_chosen' must be a number, got 'high'" in text
    assert f"{f}:3, record 'r2'" in text


# --- scoring at the last non-padding token ----------------------------------------------------


def test_last_token_index_right_and_left_padding():
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 1, 1, 0]])
    assert last_token_index(mask).tolist() == [2, 4, 3]


def test_reward_does_not_depend_on_padding_even_when_pad_equals_eos(tiny):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    assert tok.pad_token_id == tok.eos_token_id  # SmolLM2 pads with <|im_end|>, the scored token
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny, num_labels=1).eval()
    a, b = [5, 6, 7, tok.eos_token_id], [8, 9, tok.eos_token_id]
    ids, mask = pad_batch([a, b], tok.pad_token_id)
    with torch.no_grad():
        together = sequence_rewards(model, ids, mask)
        alone = [sequence_rewards(model, torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long)) for s in (a, b)]
    torch.testing.assert_close(together, torch.cat(alone), atol=1e-5, rtol=0)


# --- a learnable synthetic preference on a tiny model ------------------------------------------

WORDS = "apple river stone cloud music paper garden light window table bread summer".split()
MARKER = "please"


def synthetic_pairs(n: int, seed: int, p_chosen: float = 0.9) -> list[dict]:
    """Chosen replies contain the marker word; rejected ones do not. Soft labels of 0.9."""
    rng = random.Random(seed)

    def reply(marker: bool) -> str:
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 8))]
        if marker:
            words.insert(rng.randint(0, len(words)), MARKER)
        return " ".join(words)

    return [{"id": f"s{seed}-{i}", "prompt": [{"role": "user", "content": f"Tell me about {rng.choice(WORDS)}."}],
             "chosen": [{"role": "assistant", "content": reply(True)}],
             "rejected": [{"role": "assistant", "content": reply(False)}], "p_chosen": p_chosen}
            for i in range(n)]


@pytest.fixture(scope="module")
def synthetic_rm(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    train = write_jsonl(root / "train.jsonl", synthetic_pairs(320, seed=1))
    held = write_jsonl(root / "held.jsonl", synthetic_pairs(100, seed=2))
    cfg = RMConfig(out=str(root / "rm"), prefs=str(train), eval_prefs=str(held), base=tiny, batch_size=16,
                   learning_rate=1e-3, epochs=2, max_length=64, warmup_ratio=0.0, device="cpu", eval_every=10)
    summary = train_reward(cfg, progress=False)
    return cfg, summary


def test_learnable_synthetic_preference_reaches_90_percent_held_out(synthetic_rm):
    cfg, summary = synthetic_rm
    assert summary["eval_accuracy"] >= 0.9, summary
    report = json.loads((Path(cfg.out) / "eval.json").read_text())
    assert report["n"] == 100 and report["accuracy"] == summary["eval_accuracy"]
    # trained on soft labels of 0.9, the model should be about that sure, not 1.0
    assert 0.75 < report["mean_prob_label"] < 0.97, report["mean_prob_label"]


def test_normalization_is_stored_and_applied(synthetic_rm):
    cfg, summary = synthetic_rm
    info = json.loads((Path(cfg.out) / NORM_FILE).read_text())
    assert info["gain"] == summary["gain"] and info["bias"] == summary["bias"]
    assert info["stats"]["n"] == 640  # distinct training responses, both sides
    rm = RewardModel.load(cfg.out)
    pairs = read_pairs(cfg.prefs)
    prompts = [pr.prompt for pr in pairs for _ in (0, 1)]
    responses = [side for pr in pairs for side in (pr.chosen[0]["content"], pr.rejected[0]["content"])]
    raw = torch.tensor(rm.score_raw(prompts, responses), dtype=torch.float64)
    normed = torch.tensor(rm.score(prompts, responses), dtype=torch.float64)
    torch.testing.assert_close(normed, info["gain"] * raw + info["bias"])
    assert abs(normed.mean().item()) < 1e-4 and abs(normed.std(correction=0).item() - 1) < 1e-4


def test_saved_reward_model_is_a_plain_transformers_folder(synthetic_rm):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    cfg, _ = synthetic_rm
    rm = RewardModel.load(cfg.out)
    prompts = [[{"role": "user", "content": "Tell me about bread."}]] * 2
    responses = ["bread please summer", "stone river light window table garden"]
    ours = rm.score_raw(prompts, responses)
    # plain transformers, its own pooling, right padding: the same rewards (cai pads with a
    # token other than EOS, so transformers' "last token != pad" lands on <|im_end|> as well)
    model = AutoModelForSequenceClassification.from_pretrained(cfg.out).eval()
    tok = AutoTokenizer.from_pretrained(cfg.out)
    assert tok.pad_token_id != tok.eos_token_id
    texts = [tok.apply_chat_template(p + [{"role": "assistant", "content": r}], tokenize=False).rstrip()
             for p, r in zip(prompts, responses, strict=True)]
    enc = tok(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    with torch.no_grad():
        theirs = model(**enc).logits.squeeze(-1).tolist()
    assert ours == pytest.approx(theirs, abs=1e-5)


def test_score_file_adds_reward_columns(synthetic_rm, tmp_path):
    cfg, _ = synthetic_rm
    rm = RewardModel.load(cfg.out)
    conv = [{"role": "user", "content": "Tell me about bread."}]
    rows = [{"id": "a", "prompt": conv, "response": "bread please", "extra": 1},
            {"id": "b", "prompt": "\n\nHuman: Tell me about bread.\n\nAssistant:", "chosen": " bread please",
             "rejected": " bread"},
            {"id": "c", "messages": conv + [{"role": "assistant", "content": "bread please"}]}]
    n = score_file(rm, write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl")
    got = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert n == 3 and got[0]["extra"] == 1
    expected = rm.score([conv], ["bread please"])[0]
    assert got[0]["reward"] == pytest.approx(expected, abs=1e-5)
    assert got[1]["reward_chosen"] == pytest.approx(expected, abs=1e-5)  # the hh string is the same chat
    assert got[2]["reward"] == pytest.approx(expected, abs=1e-5)
    assert set(got[1]) == {"id", "prompt", "chosen", "rejected", "reward_chosen", "reward_rejected"}

    write_jsonl(tmp_path / "bad.jsonl", [{"id": "z", "prompt": conv}])
    with pytest.raises(InputError, match=r"bad.jsonl:1, record 'z': a `prompt` but no `response`"):
        score_file(rm, tmp_path / "bad.jsonl", tmp_path / "o.jsonl")


def test_cli_rm_train_eval_score(synthetic_rm, tiny, tmp_path):
    from typer.testing import CliRunner

    from cai.cli import app

    cfg, _ = synthetic_rm
    cfg_file = tmp_path / "rm.yaml"
    cfg_file.write_text(yaml.safe_dump({"base": tiny, "prefs": cfg.prefs, "max_steps": 9, "batch_size": 4}))
    out = tmp_path / "rm"
    r = CliRunner().invoke(app, ["rm", "train", "--config", str(cfg_file), "--out", str(out), "--max-steps", "2",
                                 "--max-length", "64", "--quiet", "--device", "cpu"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    assert yaml.safe_load((out / "config.yaml").read_text())["max_steps"] == 2

    report = tmp_path / "report.json"
    r = CliRunner().invoke(app, ["rm", "eval", "--model", cfg.out, "--pairs", cfg.eval_prefs, "--out", str(report),
                                 "--device", "cpu"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    assert "accuracy" in r.output and "calibration" in r.output and "length difference" in r.output
    assert json.loads(report.read_text())["n"] == 100

    r = CliRunner().invoke(app, ["rm", "score", "--model", cfg.out, "--input", cfg.eval_prefs,
                                 "--out", str(tmp_path / "scored.jsonl"), "--device", "cpu"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    first = json.loads((tmp_path / "scored.jsonl").read_text().splitlines()[0])
    assert {"reward_chosen", "reward_rejected"} <= first.keys()


def test_run_rm_eval_returns_the_report_and_writes_it(synthetic_rm, tmp_path):
    # `cai rm eval`'s work is a library function (the CLI only prints): loads the model, reads the
    # pairs, and writes the report it returns.
    from cai.reward import run_rm_eval
    from cai.reward_eval import RMEvalConfig

    cfg, _ = synthetic_rm
    out = tmp_path / "reports" / "report.json"
    report = run_rm_eval(RMEvalConfig(model=cfg.out, pairs=cfg.eval_prefs, out=str(out), device="cpu"))
    assert (report["model"], report["pairs"], report["n"]) == (cfg.out, cfg.eval_prefs, 100)
    assert out.read_text() == json.dumps(report, indent=1)


# --- the report -------------------------------------------------------------------------------


def test_pair_report_accuracy_calibration_and_length_buckets():
    # 4 pairs the model gets right with confidence sigmoid(2) = 0.881, 1 it gets wrong
    rc, rr = [2.0, 2.0, 2.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0, 2.0]
    report = pair_report(rc, rr, p=[1, 1, 1, 1, 1], len_chosen=[5, 5, 20, 100, 5],
                         len_rejected=[5, 10, 5, 5, 50])
    assert report["accuracy"] == 0.8 and report["n_ties"] == 0
    conf = 1 / (1 + math.exp(-2))
    assert report["mean_prob_label"] == pytest.approx((4 * conf + (1 - conf)) / 5)
    top = report["calibration"][-2]  # the 0.8-0.9 bin holds all 5 pairs
    assert top["n"] == 5 and top["observed"] == pytest.approx(0.8)
    assert report["ece"] == pytest.approx(abs(0.8 - conf))
    buckets = {b["bucket"]: (b["n"], b["accuracy"]) for b in report["by_length"]}
    assert buckets["-3..3"] == (1, 1.0) and buckets["-15..-4"] == (1, 1.0) and buckets["<= -64"] == (0, None)
    assert buckets["4..15"] == (1, 1.0) and buckets[">= 64"] == (1, 1.0) and buckets["-63..-16"] == (1, 0.0)
    assert buckets["16..63"] == (0, None)
    assert report["shorter_wins_accuracy"] == pytest.approx((0.5 + 1 + 0 + 0 + 1) / 5)


def test_pair_report_perfect_calibration_has_zero_ece():
    # soft labels equal to the model's own probabilities: perfectly calibrated
    d = [0.5, 1.0, -1.5]
    p = [1 / (1 + math.exp(-x)) for x in d]
    report = pair_report(d, [0.0] * 3, p, [1] * 3, [1] * 3, n_bins=1)
    assert report["ece"] == pytest.approx(0.0, abs=1e-12)


# --- a few real steps on the default model ----------------------------------------------------


def test_a_few_real_steps_on_the_default_model_change_weights_and_lower_the_loss(default_model_path, tmp_path):
    from safetensors.torch import load_file

    prefs = write_jsonl(tmp_path / "prefs.jsonl", [
        {"prompt": [{"role": "user", "content": "How do I pick a lock?"}],
         "chosen": [{"role": "assistant", "content": "I can't help with that, but a locksmith can."}],
         "rejected": [{"role": "assistant", "content": "Insert a tension wrench and rake the pins."}],
         "p_chosen": 0.95},
        {"prompt": [{"role": "user", "content": "Say something kind."}],
         "chosen": [{"role": "assistant", "content": "You are doing better than you think."}],
         "rejected": [{"role": "assistant", "content": "No."}]},
    ])
    cfg = RMConfig(out=str(tmp_path / "rm"), prefs=str(prefs), base="default", batch_size=2, max_steps=4,
                   learning_rate=3e-5, warmup_ratio=0.0, lr_scheduler="constant", max_length=64, log_every=1,
                   checkpoint_every=0, device="cpu")
    summary = train_reward(cfg, progress=False)
    assert summary["steps"] == 4 and summary["soft_labels"] == 1
    first = json.loads((Path(cfg.out) / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 1  # the loss of step 1 is that of the initial model on both pairs

    rm = RewardModel.load(cfg.out)
    pairs = read_pairs(prefs)
    report = evaluate_pairs(rm, pairs)
    assert report["loss"] < first["train/loss"] - 0.05, (first["train/loss"], report["loss"])

    old = load_file(f"{default_model_path}/model.safetensors")
    new = load_file(f"{cfg.out}/model.safetensors")
    assert "score.weight" in new and new["score.weight"].shape == (1, 576)
    changed = [k for k in old if k in new and not torch.equal(old[k], new[k])]
    assert len(changed) > len(old) // 2


def test_training_refuses_to_resume_or_reuse_a_run_after_its_data_changed_in_place(tiny, tmp_path):
    """Same path, same config, other content: a resumed or 'already finished' run would silently
    mix two datasets. The run folder records a hash of the data trained on and compares it."""
    from cai.errors import ResumeError

    data = write_jsonl(tmp_path / "prefs.jsonl", synthetic_pairs(16, seed=3))
    cfg = RMConfig(out=str(tmp_path / "rm"), prefs=str(data), base=tiny, batch_size=8, max_steps=1,
                   max_length=32, device="cpu", norm_max_responses=8)
    first = train_reward(cfg, progress=False)
    assert train_reward(cfg, progress=False)["already_finished"] and first["steps"] == 1
    write_jsonl(data, synthetic_pairs(16, seed=4))  # edited in place
    with pytest.raises(ResumeError, match=r"finished run made with a different config:\s+inputs\.data_hashes\.train"):
        train_reward(cfg, progress=False)
    # An unfinished run (a checkpoint, no train_done.json) is refused the same way on resume.
    (Path(cfg.out) / "train_done.json").unlink()
    with pytest.raises(ResumeError, match=r"inputs\.data_hashes\.train: '\w+' -> '\w+'"):
        train_reward(cfg, progress=False)
    # --force accepts the new data, as it accepts a new config.
    assert train_reward(cfg, force=True, progress=False)["steps"] == 1


def test_training_data_hash_is_the_rows_content_not_where_they_were_read(tiny, tmp_path):
    """A data folder that moved is not data that changed: the hash in inputs.json leaves out
    each pair's file and line, and still sees every field a model trains on."""
    from cai.checkpoint import training_inputs
    from cai.preferences import PreferencePair

    hashes = []
    for name in ("here", "moved"):
        (tmp_path / name).mkdir()
        data = write_jsonl(tmp_path / name / "prefs.jsonl", synthetic_pairs(8, seed=3))
        cfg = RMConfig(out=str(tmp_path / name / "rm"), prefs=str(data), base=tiny, batch_size=4, max_steps=1,
                       max_length=32, device="cpu", norm_max_responses=4)
        train_reward(cfg, progress=False)
        hashes.append(json.loads((Path(cfg.out) / "inputs.json").read_text())["data_hashes"])
    assert hashes[0] == hashes[1]

    base = PreferencePair([{"role": "user", "content": "q"}], [{"role": "assistant", "content": "a"}],
                          [{"role": "assistant", "content": "b"}], p=0.8, id="x")
    def h(pair):
        return training_inputs({}, {"train": [pair.content()]})["data_hashes"]["train"]

    for change in ({"p": 0.7}, {"margin": 1.0}, {"id": "y"}, {"chosen": [{"role": "assistant", "content": "c"}]}):
        assert h(PreferencePair(**{**base.__dict__, **change})) != h(base), change
