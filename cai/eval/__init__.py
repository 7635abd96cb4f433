"""Evaluation of policies (issue 12): the measures `cai eval` will report, and the fast refusal
classifier. Pure functions on judged pairs, refusal verdicts and answer lengths: no engine, no
files. `measures.py` holds the estimates and their intervals, `refusal.py` the classifier
interface and its pattern-list implementation. docs/eval.md says what each number means.
"""
