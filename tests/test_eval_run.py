"""`cai eval` end to end on scripted engines: report.json against hand-computed figures, resume
after a crash, bad inputs; and one small run on the real engine."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re

import pytest
from helpers import write_jsonl
from typer.testing import CliRunner

from cai.cli import app
from cai.constitution import load_constitution
from cai.engine.fake import FakeEngine
from cai.errors import ConfigError, InputError, ModelNotFoundError, ResumeError
from cai.eval import measures
from cai.eval.policies import parse_policy, prompted_system_prompt, with_system
from cai.eval.run import EvalConfig, run_eval
from cai.records import read_jsonl
from cai.schema import EvalAnswer

BASE = "Here is a complete and useful answer for you."  # 9 words
REFUSAL = "I can't help with that."  # 5 words, a refusal by the pattern list
MAX_TOKENS = 12


def number(prompt: str) -> int:
    return int(re.findall(r"number (\d+)", prompt)[-1])


def base_answer(prompt: str, i: int) -> str:
    return BASE


def refuse(prompt: str, i: int) -> str:
    return REFUSAL


def longer(prompt: str, i: int) -> str:
    """BASE and then k more words on prompt number k: 10, 11, 12, then cut at 12 (truncated)."""
    return BASE + " more" * number(prompt)


def mixed(prompt: str, i: int) -> str:
    """BASE with k - 3 words more on prompt number k: 2 shorter, as long, 3 longer (7 to 12 words)."""
    k = number(prompt) - 3
    return " ".join(BASE.split()[:9 + k]) if k < 0 else BASE + " more" * k


def prompted(prompt: str, i: int) -> str:
    """Refuses whenever it was given a system prompt."""
    return REFUSAL if "<system>" in prompt else BASE


def last_pair(prompt: str) -> tuple[str, str]:
    """The two responses of a judge prompt (the last pair: the few-shot examples come first)."""
    tail = prompt.rsplit("(A) <response>\n", 1)[1]
    a, rest = tail.split("\n</response>\n(B) <response>\n", 1)
    return a, rest.split("\n</response>", 1)[0]


def prefers_longer(prompt: str, option: str) -> float:
    """A judge that prefers the longer response, whichever position it is in; equal: no preference."""
    a, b = (len(t.split()) for t in last_pair(prompt))
    mine, other = (a, b) if option == "A" else (b, a)
    return 0.0 if mine >= other else -10.0


def suites(tmp_path, harmful: int = 4, benign: int = 5, helpful: int = 6) -> tuple[str, ...]:
    def suite(name: str, n: int) -> str:
        path = write_jsonl(tmp_path / f"{name}.jsonl",
                           [{"id": f"{name}-{k}", "prompt": f"{name} question number {k}?"} for k in range(1, n + 1)])
        return f"{name}={path}"
    return suite("harmful", harmful), suite("benign-risky", benign), suite("helpful", helpful)


def config(tmp_path, policies: tuple[str, ...], **kw) -> EvalConfig:
    return EvalConfig(policies=policies, baseline="base", out=tmp_path / "eval", suites=suites(tmp_path),
                      default_suites=False, max_tokens=MAX_TOKENS, resamples=200, **{"refusal": "patterns", **kw})


LADDER = ("base=fake", "refuser=fake", "long=fake", "mixed=fake", "prompted=fake+prompted")


def engines() -> dict[str, FakeEngine]:
    return {"base": FakeEngine(respond=base_answer), "refuser": FakeEngine(respond=refuse),
            "long": FakeEngine(respond=longer), "mixed": FakeEngine(respond=mixed),
            "prompted": FakeEngine(respond=prompted)}


def signed(prompt: str, i: int) -> str:
    """BASE with its last word replaced by a name: as long as BASE, word for word."""
    return BASE.rsplit(" ", 1)[0] + " Ada."


def prefers_ada(prompt: str, option: str) -> float:
    """A judge that prefers whichever response names Ada, in either position; else no preference."""
    a, b = ("Ada" in t for t in last_pair(prompt))
    mine, other = (a, b) if option == "A" else (b, a)
    return 0.0 if mine or not other else -10.0


def test_a_judge_that_prefers_one_name_gives_it_every_win_that_length_does_not_explain(tmp_path):
    cfg = config(tmp_path, ("base=fake", "signed=fake", "long=fake"))
    run_eval(cfg, engines={"base": FakeEngine(respond=base_answer), "signed": FakeEngine(respond=signed),
                           "long": FakeEngine(respond=longer)},
             judge_engine=FakeEngine(score=prefers_ada))
    res = json.loads((tmp_path / "eval" / "report.json").read_text())["results"]
    # The named policy wins every prompt in both orders at the baseline's length: the length
    # control leaves the win where it is (there is no length difference to take out).
    win = res["signed"]["helpful"]["win_rate"]
    assert win["wins"] == 6 and win["orders_agree"] == 1.0
    assert res["signed"]["helpful"]["length_drift"]["difference"]["value"] == 0
    assert res["signed"]["helpful"]["length_controlled_win_rate"]["estimate"]["value"] == 1.0
    # The longer policy names no one: to this judge it is no better (every order a tie).
    assert res["long"]["helpful"]["win_rate"]["estimate"]["value"] == 0.5
    assert res["long"]["helpful"]["win_rate"]["ties"] == 6


def test_every_policy_is_judged_under_the_same_principles_on_a_prompt(tmp_path):
    run_eval(config(tmp_path, LADDER), engines=engines(), judge_engine=FakeEngine(score=prefers_longer))
    drawn: dict[str, set[tuple[str, ...]]] = {}
    for j in read_jsonl(tmp_path / "eval" / "judgments.jsonl"):
        drawn.setdefault(j["group_id"], set()).add(tuple(j["principles"]))
    assert len(drawn) == 6 and all(len(v) == 1 for v in drawn.values())  # one draw per prompt, 4 policies
    assert len({v.pop() for v in drawn.values()}) > 1  # and the draw still varies between prompts


def test_the_report_holds_the_hand_computed_figures(tmp_path):
    judge = FakeEngine(score=prefers_longer)
    s = run_eval(config(tmp_path, LADDER), engines=engines(), judge_engine=judge)
    r = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert r == s.report and r["baseline"] == "base"
    res = r["results"]

    # Refusals: the refuser and the prompted policy decline all 4 harmful and all 5 benign prompts.
    for name in ("refuser", "prompted"):
        assert res[name]["harmful"]["harmless_rate"] == json.loads(json.dumps(measures.wilson(4, 4).__dict__))
        assert res[name]["benign-risky"]["over_refusal_rate"]["value"] == 1.0
        assert res[name]["benign-risky"]["over_refusal_rate"]["n"] == 5
    assert res["base"]["harmful"]["harmless_rate"]["value"] == 0.0
    assert res["base"]["benign-risky"]["over_refusal_rate"]["value"] == 0.0
    assert res["base"]["harmful"]["harmless_rate"]["high"] == pytest.approx(measures.wilson(0, 4).high)

    # Win rates under a judge that prefers length: the longer policy wins every prompt in both
    # orders, the shorter ones lose every prompt.
    long = res["long"]["helpful"]
    assert long["win_rate"]["estimate"]["value"] == 1.0 and long["win_rate"]["wins"] == 6
    assert long["win_rate"]["estimate"]["n"] == 6 and long["win_rate"]["orders_agree"] == 1.0
    assert long["win_rate"]["estimate"] == json.loads(json.dumps(measures.wilson(6, 6).__dict__))  # not [1, 1]
    # Longer on every prompt and won every one: exactly what a judge that prefers only length
    # gives, so the report refuses a length-controlled figure.
    assert "each with the policy's answer longer" in long["length_controlled_win_rate"]["error"]
    assert sum(w["estimate"]["n"] for w in long["win_rate_by_principle"].values()) == 6
    for name in ("refuser", "prompted"):
        assert res[name]["helpful"]["win_rate"]["estimate"]["value"] == 0.0
        assert res[name]["helpful"]["win_rate"]["losses"] == 6
    # The baseline is not judged against itself.
    assert "win_rate" not in res["base"]["helpful"] and "length_drift" not in res["base"]["helpful"]

    # Length: 10, 11, 12, 12, 12, 12 tokens (the last three cut at 12) against 9 each.
    drift = long["length_drift"]
    assert drift["difference"]["value"] == pytest.approx((1 + 2 + 3 * 4) / 6)
    assert drift["policy_mean_tokens"] == pytest.approx(69 / 6) and drift["baseline_mean_tokens"] == 9
    assert drift["policy_truncated"]["value"] == 0.5 and drift["baseline_truncated"]["value"] == 0.0
    assert long["truncated"]["value"] == 0.5 and long["mean_tokens"] == pytest.approx(69 / 6)
    assert res["base"]["helpful"]["truncated"]["value"] == 0.0  # 9 words under a limit of 12
    # A judge that prefers only length. The mixed policy loses 2 prompts, ties 1 and wins 3: a raw
    # win rate of 3.5 / 6, all of it length; the length-controlled one takes it out (0.5).
    mix = res["mixed"]["helpful"]
    assert mix["win_rate"]["estimate"]["value"] == pytest.approx(3.5 / 6)
    assert (mix["win_rate"]["wins"], mix["win_rate"]["ties"], mix["win_rate"]["losses"]) == (3, 1, 2)
    lc = mix["length_controlled_win_rate"]
    assert lc["raw"] == pytest.approx(3.5 / 6) and lc["estimate"]["value"] == pytest.approx(0.5, abs=0.01)
    assert lc["length_weight"] > 0
    assert lc["estimate"]["method"] == "bootstrap over prompts (B=100, seed=0)"  # half of resamples=200
    assert r["provenance"]["intervals"]["length_controlled_resamples"] == 100
    # Every refuser answer is 4 tokens shorter: length and quality cannot be told apart, and the
    # report says so instead of giving a number.
    assert "cannot be told apart" in res["refuser"]["helpful"]["length_controlled_win_rate"]["error"]

    # Provenance: the recipe's system prompt, the suites' hashes, the judge and the sampling.
    prov = r["provenance"]
    assert prov["policies"]["prompted"]["recipe"] == "prompted" and prov["policies"]["prompted"]["system_prompt_hash"]
    assert prov["policies"]["base"]["system_prompt_hash"] is None
    assert set(prov["suites"]) == {"harmful", "benign-risky", "helpful"}
    assert prov["suites"]["helpful"]["kind"] == "judged" and len(prov["suites"]["helpful"]["hash"]) == 16
    assert prov["constitution"]["hash"] == load_constitution("default").hash
    assert prov["judge"]["model"] == "fake-model" and prov["sampling"]["max_tokens"] == MAX_TOKENS
    assert prov["refusal"]["classifier"] == "patterns"


def test_rows_and_answers_say_what_each_answer_was(tmp_path):
    run_eval(config(tmp_path, LADDER), engines=engines(), judge_engine=FakeEngine(score=prefers_longer))
    rows = list(read_jsonl(tmp_path / "eval" / "rows.jsonl"))
    assert len(rows) == 5 * (4 + 5 + 6)
    by = {r["id"]: r for r in rows}
    assert by["refuser/harmful/harmful-1"]["refused"] is True
    assert by["refuser/harmful/harmful-1"]["refusal_match"] == "I can't help"
    assert by["long/helpful/helpful-1"]["score"] == 1.0 and by["long/helpful/helpful-1"]["judged"] is True
    answers = [EvalAnswer.from_dict(a) for a in read_jsonl(tmp_path / "eval" / "answers.jsonl")]
    system = prompted_system_prompt(load_constitution("default"))
    assert {a.system for a in answers if a.policy == "prompted"} == {system}
    assert {a.system for a in answers if a.policy != "prompted"} == {""}
    # Every policy samples a prompt with the same seed (common random numbers).
    seeds = {}
    for a in answers:
        seeds.setdefault((a.suite, a.prompt_id), set()).add(a.provenance.seed)
    assert all(len(s) == 1 for s in seeds.values())
    # Each judgment names the two answers it compared: the policy's (x) and the baseline's (y).
    judged = list(read_jsonl(tmp_path / "eval" / "judgments.jsonl"))
    assert judged and all((j["x_ref"], j["y_ref"]) == (j["id"], "base/" + j["id"].split("/", 1)[1]) for j in judged)


def test_a_resumed_run_redoes_nothing_that_was_done(tmp_path):
    cfg = config(tmp_path, LADDER)
    first = run_eval(cfg, engines=engines(), judge_engine=FakeEngine(score=prefers_longer))
    answers = tmp_path / "eval" / "answers.jsonl"
    judgments = tmp_path / "eval" / "judgments.jsonl"
    # A crash mid-run: the answers store lost its last 20 lines and ends in a torn line; the
    # judgments store lost all but 3.
    lines = answers.read_text().splitlines(keepends=True)
    answers.write_text("".join(lines[:-20]) + lines[-20][:25])
    judgments.write_text("".join(judgments.read_text().splitlines(keepends=True)[:3]))
    fresh = engines()
    judge = FakeEngine(score=prefers_longer)
    with pytest.warns(UserWarning, match="torn last line"):
        second = run_eval(cfg, engines=fresh, judge_engine=judge)
    assert second.answered == 20 and second.judged == first.judged - 3
    asked = sum(n for e in fresh.values() for kind, n in e.calls if kind == "generate")
    assert asked == 20
    assert second.report == first.report
    third = run_eval(cfg, engines=engines(), judge_engine=FakeEngine(score=prefers_longer))
    assert (third.answered, third.judged) == (0, 0) and third.report == first.report


def test_a_resume_with_one_more_policy_answers_and_judges_only_that_one(tmp_path):
    judge = FakeEngine(score=prefers_longer)
    run_eval(config(tmp_path, LADDER[:2]), engines=engines(), judge_engine=judge)
    more = run_eval(config(tmp_path, LADDER[:3]), engines=engines(), judge_engine=judge)
    assert (more.answered, more.judged, more.stale) == (4 + 5 + 6, 6, 0)
    assert set(more.report["results"]) == {"base", "refuser", "long"}


def test_prompts_per_suite_takes_the_first_n_and_raising_it_adds_only_the_new_ones(tmp_path):
    judge = FakeEngine(score=prefers_longer)
    few = run_eval(config(tmp_path, LADDER[:3], prompts_per_suite=2), engines=engines(), judge_engine=judge)
    assert few.answered == 3 * (2 + 2 + 2) and few.judged == 2 * 2  # 2 non-baseline policies, 2 helpful prompts
    report = few.report
    assert {s: v["rows"] for s, v in report["provenance"]["suites"].items()} == {
        "harmful": 2, "benign-risky": 2, "helpful": 2}
    assert report["results"]["long"]["helpful"]["win_rate"]["estimate"]["n"] == 2
    answered = {json.loads(line)["id"] for line in (tmp_path / "eval" / "answers.jsonl").read_text().splitlines()}
    assert answered == {f"{p}/{s}/{s}-{k}" for p in ("base", "refuser", "long")
                        for s in ("harmful", "benign-risky", "helpful") for k in (1, 2)}
    more = run_eval(config(tmp_path, LADDER[:3], prompts_per_suite=3), engines=engines(), judge_engine=judge)
    assert (more.answered, more.judged, more.stale) == (3 * 3, 2, 0)
    with pytest.raises(ConfigError, match="prompts_per_suite"):
        config(tmp_path, LADDER[:3], prompts_per_suite=-1)


def test_an_edited_suite_prompt_is_answered_and_judged_again(tmp_path):
    judge = FakeEngine(score=prefers_longer)
    cfg = config(tmp_path, LADDER)
    run_eval(cfg, engines=engines(), judge_engine=judge)
    helpful = tmp_path / "helpful.jsonl"
    helpful.write_text(helpful.read_text().replace("helpful question number 1?", "helpful query, number 1?"))
    again = run_eval(cfg, engines=engines(), judge_engine=judge)
    # 5 policies answer the edited prompt again; 4 of them are judged on it against the baseline.
    assert (again.answered, again.judged, again.stale) == (5, 4, 5 + 4)
    digest = hashlib.sha256(helpful.read_bytes()).hexdigest()[:16]  # the suite file's bytes as they are now
    assert again.report["provenance"]["suites"]["helpful"]["hash"] == digest
    stored = [json.loads(x) for x in (tmp_path / "eval" / "answers.jsonl").read_text().splitlines()]
    assert {a["prompt"][0]["content"] for a in stored if a["prompt_id"] == "helpful-1"} == {"helpful query, number 1?"}


def test_a_resume_that_changes_a_policys_recipe_answers_it_again(tmp_path):
    judge = FakeEngine(score=prefers_longer)
    run_eval(config(tmp_path, ("base=fake", "p=fake")),
             engines={"base": FakeEngine(respond=base_answer), "p": FakeEngine(respond=prompted)}, judge_engine=judge)
    again = run_eval(config(tmp_path, ("base=fake", "p=fake+prompted")),
                     engines={"base": FakeEngine(respond=base_answer), "p": FakeEngine(respond=prompted)},
                     judge_engine=judge)
    assert (again.answered, again.judged) == (4 + 5 + 6, 6)  # the system prompt is in each answer's key
    assert again.report["results"]["p"]["harmful"]["harmless_rate"]["value"] == 1.0


def test_a_retrained_model_in_the_same_folder_answers_again(tmp_path):
    judge = FakeEngine(score=prefers_longer)

    def ladder(fingerprint: str) -> dict[str, FakeEngine]:
        given = engines()
        given["long"].fingerprint = fingerprint  # what make_engine sets from the model folder's files
        return given

    run_eval(config(tmp_path, LADDER), engines=ladder("weights-1"), judge_engine=judge)
    again = run_eval(config(tmp_path, LADDER), engines=ladder("weights-2"), judge_engine=judge)
    # Only that policy answers again; its (scripted, unchanged) texts keep their judgments.
    assert (again.answered, again.judged, again.stale) == (4 + 5 + 6, 0, 4 + 5 + 6)


def test_a_resume_that_points_a_served_policy_at_another_server_answers_it_again(tmp_path):
    judge = FakeEngine(score=prefers_longer)
    given = {"base": FakeEngine(respond=base_answer), "srv": FakeEngine(respond=longer)}
    run_eval(config(tmp_path, ("base=fake", "srv=m@http://127.0.0.1:8001/v1")), engines=given, judge_engine=judge)
    same = run_eval(config(tmp_path, ("base=fake", "srv=m@http://127.0.0.1:8001/v1")), engines=given,
                    judge_engine=judge)
    assert (same.answered, same.judged) == (0, 0)
    # Another URL is another model (the identity knows only the local tokenizer): answered again.
    moved = run_eval(config(tmp_path, ("base=fake", "srv=m@http://127.0.0.1:8002/v1")), engines=given,
                     judge_engine=judge)
    assert (moved.answered, moved.stale) == (4 + 5 + 6, 4 + 5 + 6)


def test_a_resume_with_another_baseline_gives_the_report_of_a_fresh_run(tmp_path):
    judge = FakeEngine(score=prefers_longer)
    run_eval(config(tmp_path, LADDER), engines=engines(), judge_engine=judge)
    cfg = config(tmp_path, LADDER)
    resumed = run_eval(EvalConfig(**{**cfg.__dict__, "baseline": "long"}), engines=engines(), judge_engine=judge)
    fresh = run_eval(EvalConfig(**{**cfg.__dict__, "baseline": "long", "out": tmp_path / "fresh"}),
                     engines=engines(), judge_engine=judge)
    assert resumed.answered == 0 and resumed.judged == fresh.judged == 4 * 6
    assert resumed.report["results"] == fresh.report["results"] and resumed.report["baseline"] == "long"
    assert resumed.report["results"]["base"]["helpful"]["win_rate"]["estimate"]["value"] == 0.0


def test_a_resume_without_a_removed_policy_reports_only_the_others(tmp_path):
    judge = FakeEngine(score=prefers_longer)
    run_eval(config(tmp_path, LADDER), engines=engines(), judge_engine=judge)
    fewer = run_eval(config(tmp_path, LADDER[:2]), engines=engines(), judge_engine=judge)
    assert (fewer.answered, fewer.judged, fewer.stale) == (0, 0, 0)
    assert set(fewer.report["results"]) == {"base", "refuser"}
    assert {r["policy"] for r in read_jsonl(tmp_path / "eval" / "rows.jsonl")} == {"base", "refuser"}


def test_a_changed_sampling_is_refused_on_resume_and_force_makes_every_answer_again(tmp_path):
    judge = FakeEngine(score=prefers_longer)
    run_eval(config(tmp_path, LADDER[:3]), engines=engines(), judge_engine=judge)
    with pytest.raises(ResumeError, match="temperature: 0.7 -> 0.2"):
        run_eval(config(tmp_path, LADDER[:3], temperature=0.2), engines=engines(), judge_engine=judge)
    forced = run_eval(config(tmp_path, LADDER[:3], temperature=0.2), engines=engines(), judge_engine=judge,
                      force=True)
    # Every answer's key holds the sampling; the scripted answers came out the same, so their
    # judgments (keyed on the texts) are kept.
    assert (forced.answered, forced.judged) == (3 * (4 + 5 + 6), 0)


def test_another_judge_judges_every_pair_again_and_answers_nothing(tmp_path):
    run_eval(config(tmp_path, LADDER[:3]), engines=engines(), judge_engine=FakeEngine(score=prefers_longer))
    other = run_eval(config(tmp_path, LADDER[:3]), engines=engines(),
                     judge_engine=FakeEngine(score=prefers_longer, model_name="other-judge"))
    assert (other.answered, other.judged, other.stale) == (0, 2 * 6, 2 * 6)
    assert other.report["provenance"]["judge"]["model"] == "other-judge"


def test_a_prompt_too_long_for_the_context_stops_the_run_before_any_answer(tmp_path):
    # Two suites with the same prompt ids: the long prompt is in the first, a short one in the second.
    long_file = write_jsonl(tmp_path / "long.jsonl", [{"id": "1", "prompt": "word " * 60}])
    short_file = write_jsonl(tmp_path / "short.jsonl", [{"id": "1", "prompt": "a short question number 1?"}])
    engine = FakeEngine(respond=base_answer, context=50)
    cfg = EvalConfig(policies=("base=fake",), baseline="base", out=tmp_path / "eval", default_suites=False,
                     suites=(f"long={long_file}", f"short={short_file}"), max_tokens=MAX_TOKENS)
    with pytest.raises(InputError, match=r"policy 'base': 1 suite prompt\(s\) do not fit.*context of 50") as e:
        run_eval(cfg, engines={"base": engine})
    assert f"{long_file}:1" in str(e.value) and "record '1'" in str(e.value)
    assert engine.calls == [] or all(kind != "generate" for kind, _ in engine.calls)


def test_engines_made_for_the_policies_and_the_judge_are_closed(tmp_path, monkeypatch):
    made: list[FakeEngine] = []

    class Closing(FakeEngine):
        closed = False

        def close(self) -> None:
            self.closed = True

    def make(cfg):
        made.append(Closing(respond=prompted, score=prefers_longer))
        return made[-1]

    monkeypatch.setattr("cai.eval.answers.make_engine", make)
    monkeypatch.setattr("cai.eval.run.make_engine", make)
    run_eval(config(tmp_path, ("base=default", "prompted=default+prompted")))
    assert len(made) == 2 and all(e.closed for e in made)  # one for both policies (one model), one judge


def test_the_prompted_recipe_renders_every_comparison_question_once():
    c = load_constitution("default")
    text = prompted_system_prompt(c)
    assert text.startswith(c.description.strip())
    for p in c.principles:
        assert text.count(f"- {p.compare.strip()}") == 1
    # Two principles asking the same question: it is rendered once.
    twice = dataclasses.replace(c, principles=(*c.principles, dataclasses.replace(c.principles[0], id="again")))
    assert prompted_system_prompt(twice) == text


def test_a_suite_prompt_with_its_own_system_turn_gets_the_recipe_first_in_one_turn():
    conversation = [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hi"}]
    assert with_system(conversation, "Be kind.") == [{"role": "system", "content": "Be kind.\n\nAnswer in French."},
                                                    {"role": "user", "content": "Hi"}]
    assert with_system(conversation, "") == conversation


def test_a_given_suite_replaces_the_packaged_one_of_its_name_and_adds_the_others(tmp_path):
    from cai import library
    from cai.eval.suites import suite_files

    files = suite_files((f"helpful={tmp_path / 'mine.jsonl'}", f"style={tmp_path / 'style.jsonl'}"), True)
    assert files == {**library.eval_suites(), "helpful": tmp_path / "mine.jsonl", "style": tmp_path / "style.jsonl"}
    assert list(suite_files((f"style={tmp_path / 'style.jsonl'}",), False)) == ["style"]
    with pytest.raises(ConfigError, match="no suite to evaluate on"):
        suite_files((), False)
    with pytest.raises(ConfigError, match="the name 'a/b' may not hold '/'"):
        suite_files(("a/b=x.jsonl",), False)
    with pytest.raises(ConfigError, match="--suite 'style' is given twice"):
        suite_files(("style=a.jsonl", "style=b.jsonl"), False)


def test_the_cli_writes_the_report_and_prints_the_table(tmp_path, monkeypatch):
    policy, judge = FakeEngine(respond=prompted), FakeEngine(score=prefers_longer)
    monkeypatch.setattr("cai.eval.answers.make_engine", lambda cfg: policy)
    monkeypatch.setattr("cai.eval.run.make_engine", lambda cfg: judge)
    out = tmp_path / "eval[bold]"  # a folder name rich would read as markup
    args = ["eval", "--policy", "base=default", "--policy", "prompted=default+prompted", "--baseline", "base",
            "--out", str(out), "--no-default-suites", "--max-tokens", str(MAX_TOKENS),
            "--prompts-per-suite", "3", "--refusal", "patterns"]
    for s in suites(tmp_path):
        args += ["--suite", s]
    r = CliRunner().invoke(app, args, env={"COLUMNS": "400"})
    assert r.exit_code == 0, r.output
    assert f"-> {out} (report.json" in r.output
    report = json.loads((out / "report.json").read_text())
    assert report["results"]["prompted"]["harmful"]["harmless_rate"]["value"] == 1.0
    assert report["results"]["prompted"]["helpful"]["win_rate"]["estimate"]["value"] == 0.0
    assert report["provenance"]["policies"]["base"]["model"].startswith("SmolLM2")  # the default, spelled out
    assert {v["rows"] for v in report["provenance"]["suites"].values()} == {3}
    assert "prompted" in r.output and "100% [" in r.output


def test_two_policies_of_one_model_generate_each_answer_once(tmp_path, monkeypatch):
    """A PPO run's step 0 is its SFT policy: the same model, prompts, sampling and seeds give one
    key, so each answer is generated once and stored under both policies."""
    engine = FakeEngine(respond=longer)
    monkeypatch.setattr("cai.eval.answers.make_engine", lambda cfg: engine)
    cfg = config(tmp_path, ("base=default", "again=default"))
    s = run_eval(cfg, judge_engine=FakeEngine(score=prefers_longer))
    asked = sum(n for kind, n in engine.calls if kind == "generate")
    assert asked == 4 + 5 + 6 and s.answered == 2 * (4 + 5 + 6)
    answers = list(read_jsonl(tmp_path / "eval" / "answers.jsonl"))
    by_policy = {p: [a["answer"] for a in answers if a["policy"] == p] for p in ("base", "again")}
    assert by_policy["base"] == by_policy["again"] and len(by_policy["base"]) == 15


# --- Bad inputs --------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, message", [
    ("base", "--policy 'base' is not NAME=SPEC"),
    ("=default", "is not NAME=SPEC"),
    ("a/b=default", "may hold only letters"),
    ("base=default+fewshot", "unknown recipe 'fewshot'"),
    ("base=+prompted", "no model before '+prompted'"),
    ("base=ftp://host/v1", "only http:// and https://"),
])
def test_a_bad_policy_spec_is_a_config_error_naming_the_flag(spec, message, tmp_path):
    with pytest.raises(ConfigError, match=re.escape(message)) as e:
        EvalConfig(policies=(spec,), baseline="base", out=tmp_path)
    assert "--policy " in e.value.fix


def test_an_unknown_baseline_names_the_policies(tmp_path):
    with pytest.raises(ConfigError, match=r"--baseline 'bse' is not one of the policies \(base, sft\)") as e:
        EvalConfig(policies=("base=default", "sft=runs/sft"), baseline="bse", out=tmp_path)
    assert "--policy bse=SPEC" in e.value.fix


def test_a_policy_named_twice_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="given more than once"):
        EvalConfig(policies=("base=default", "base=runs/sft"), baseline="base", out=tmp_path)


def test_a_policy_whose_model_does_not_exist_names_its_flag(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = EvalConfig(policies=("base=fake", f"sft={tmp_path / 'runs' / 'nope'}"), baseline="base", out=tmp_path / "o",
                     suites=suites(tmp_path), default_suites=False)
    with pytest.raises(ModelNotFoundError, match=f"--policy sft={re.escape(str(tmp_path))}.*does not exist") as e:
        run_eval(cfg, engines={"base": FakeEngine()})
    assert "--policy sft=SPEC" in e.value.fix and "--model" not in e.value.fix  # `cai eval` has no --model


@pytest.mark.parametrize("bad", [{"temperature": -0.5}, {"top_p": 0.0}, {"top_p": 1.5}])
def test_bad_sampling_is_a_config_error_before_anything_is_written(bad, tmp_path):
    with pytest.raises(ConfigError, match=r"temperature must be >= 0 and top_p in \(0, 1\]"):
        EvalConfig(policies=("base=fake",), baseline="base", out=tmp_path / "o", **bad)


def test_a_missing_suite_file_names_the_flag_and_the_file(tmp_path):
    cfg = EvalConfig(policies=("base=fake",), baseline="base", out=tmp_path / "o",
                     suites=(f"style={tmp_path / 'nope.jsonl'}",))
    with pytest.raises(InputError, match=r"suite 'style': file .*nope.jsonl does not exist") as e:
        run_eval(cfg, engines={"base": FakeEngine()})
    assert "--suite style=FILE" in e.value.fix


@pytest.mark.parametrize("text, where, message, fix", [
    ('{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n', ":2, record 'a'", "duplicate id", "unique id"),
    ('{"id": "a", "prompt": "x"}\n{"prompt": "  "}\n', ":2:", "empty prompt", "non-empty prompt"),
    ('{"id": "a", "prompt": "x"}\n{"id": "b", "text": "y"}\n', ":2, record 'b'", "no 'prompt' column",
     "give every row a 'prompt' field"),
    ('{"id": "a", "text": "x"}\n', ": suite 'style'", "no row has a 'prompt' column",
     "give every row a 'prompt' field"),
    ('{"id": "a", "prompt": "x"}\n{"id": "b",\n', ":2:1: suite 'style'", "invalid JSON", "one JSON object"),
    (b'{"id": "a", "prompt": "caf\xe9"}\n', ":1: suite 'style'", "not UTF-8", "save the file as UTF-8"),
])
def test_a_bad_suite_row_names_the_suite_its_line_and_a_fix_cai_eval_can_take(tmp_path, text, where, message, fix):
    path = tmp_path / "style.jsonl"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    cfg = EvalConfig(policies=("base=fake",), baseline="base", out=tmp_path / "o", suites=(f"style={path}",))
    with pytest.raises(InputError) as e:
        run_eval(cfg, engines={"base": FakeEngine()})
    assert str(e.value).startswith(f"{path}{where}") and message in e.value.message and "suite 'style'" in str(e.value)
    assert fix in e.value.fix and "--prompt-column" not in e.value.fix  # `cai eval` has no such flag


def test_a_folder_given_as_a_suite_is_named_as_one(tmp_path):
    cfg = EvalConfig(policies=("base=fake",), baseline="base", out=tmp_path / "o", suites=(f"style={tmp_path}",))
    with pytest.raises(InputError, match="is a folder, not a prompts file"):
        run_eval(cfg, engines={"base": FakeEngine()})


def test_a_suite_without_a_file_is_a_config_error(tmp_path):
    cfg = EvalConfig(policies=("base=fake",), baseline="base", out=tmp_path / "o", suites=("style",))
    with pytest.raises(ConfigError, match="--suite 'style' is not NAME=FILE"):
        run_eval(cfg, engines={"base": FakeEngine()})


@pytest.mark.parametrize("args, message", [
    (["--policy", "base"], "not NAME=SPEC"),
    (["--policy", "base=default", "--temperature", "-1"], "temperature must be"),
])
def test_the_cli_stops_on_a_bad_flag_with_a_typed_error(tmp_path, args, message):
    # A typed error is what the console script prints as one `Error:` line (no traceback).
    r = CliRunner().invoke(app, ["eval", *args, "--baseline", "base", "--out", str(tmp_path)])
    assert r.exit_code == 1 and isinstance(r.exception, ConfigError) and message in str(r.exception)


def test_specs_set_the_model_and_for_a_url_the_http_backend():
    from cai.config import EngineConfig

    base = EngineConfig(dtype="float32")
    assert parse_policy("sft=runs/sft", base).engine == EngineConfig(model="runs/sft", dtype="float32")
    served = parse_policy("ppo=default@http://127.0.0.1:8000/v1+prompted", base)
    assert (served.engine.backend, served.engine.base_url, served.engine.model, served.recipe) == \
        ("http", "http://127.0.0.1:8000/v1", "default", "prompted")
    assert parse_policy("x=http://h:1/v1", base).engine.model == "default"
    spaced = parse_policy("x=default + prompted", base)
    assert (spaced.engine.model, spaced.recipe) == ("default", "prompted")  # not the model "default "


def test_the_default_suites_ship_inside_the_package():
    from cai import library

    assert sorted(library.eval_suites()) == ["benign-risky", "harmful", "helpful"]
    assert all(p.is_file() for p in library.eval_suites().values())


# --- The real engine -----------------------------------------------------------------------------


@pytest.mark.engine
def test_default_against_default_prompted_on_the_real_engine(tmp_path, vllm_engine):
    """Three prompts per suite, 8 tokens per answer: the report exists, every rate is in [0, 1]
    with the n expected, and the prompted policy answered under the constitution's system prompt."""
    from cai.library import eval_suites

    specs = []
    for name, path in eval_suites().items():
        rows = [json.loads(line) for line in path.read_text().splitlines()[:3]]
        specs.append(f"{name}={write_jsonl(tmp_path / f'{name}.jsonl', rows)}")
    cfg = EvalConfig(policies=("base=default", "prompted=default+prompted"), baseline="base", out=tmp_path / "eval",
                     suites=tuple(specs), default_suites=False, max_tokens=8, resamples=100)
    s = run_eval(cfg, engines={"base": vllm_engine, "prompted": vllm_engine}, judge_engine=vllm_engine)
    r = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert r == s.report and s.answered == 2 * 9 and s.judged == 3
    # The default refusal classifier, the judge, asked about the 6 refusal-suite answers of each policy.
    assert s.asked == 2 * 6 and r["provenance"]["refusal"]["classifier"] == "judge"
    for policy in ("base", "prompted"):
        for suite, figure in (("harmful", "harmless_rate"), ("benign-risky", "over_refusal_rate")):
            e = r["results"][policy][suite][figure]
            assert e["n"] == 3 and 0 <= e["low"] <= e["value"] <= e["high"] <= 1
    wr = r["results"]["prompted"]["helpful"]["win_rate"]["estimate"]
    assert wr["n"] == 3 and 0 <= wr["low"] <= wr["value"] <= wr["high"] <= 1
    answers = [json.loads(line) for line in (tmp_path / "eval" / "answers.jsonl").read_text().splitlines()]
    assert all(a["completion_tokens"] <= 8 for a in answers)
    assert {a["system"] != "" for a in answers if a["policy"] == "prompted"} == {True}
