"""Evaluation of policies (issue 12): `cai eval`. `measures.py` holds the estimates and their
intervals (pure functions on judged pairs, refusal verdicts and answer lengths: no engine, no
files), `refusal.py` the classifier interface and its pattern list; `policies.py`, `suites.py`,
`answers.py`, `report.py` and `run.py` make the stage; `hacking.py` (a PPO run's reward model
against the judge over its snapshots) and `cost.py` (what each rung took to make) add to its
report. docs/eval.md says what each number means.
"""
