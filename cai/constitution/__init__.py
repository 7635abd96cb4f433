"""Constitutions: principle files, resolved and hashed, and the seeded choice of a principle.

A constitution is a YAML file of principles (each a critique request, a revision request and a
judge question), prompt templates and few-shot examples; it may `include` other files.
docs/constitution.md is the user's reference. The package, in the order a file travels:

- `model`: the frozen dataclasses (`Principle`, the few-shot examples, `Templates`,
  `Constitution` with its seeded sampling) and the hashes records are stamped with;
- `reader`: one file read strictly into checked plain values, every problem located; the keys
  it allows are the model's fields;
- `load`: include resolution (the including file wins) and `load_constitution`;
- `tools`: `dump_constitution`, `diff_constitutions` and `lint`, behind `cai principles`.

The names below are the package's public interface: `from cai.constitution import X`.
"""

from cai.constitution.load import DEFAULT_PATH, check_constitution, load_constitution
from cai.constitution.model import (
    HASH_CHARS,
    HASH_SCHEMA,
    TEMPLATE_PLACEHOLDERS,
    ComparisonExample,
    Constitution,
    CritiqueExample,
    Principle,
    Templates,
    principle_hash,
)
from cai.constitution.tools import (
    FEWSHOT_CHAR_BUDGET,
    ConstitutionDiff,
    diff_constitutions,
    dump_constitution,
    lint,
)
from cai.errors import ConstitutionError

__all__ = [
    "ComparisonExample", "Constitution", "ConstitutionDiff", "ConstitutionError", "CritiqueExample",
    "DEFAULT_PATH", "FEWSHOT_CHAR_BUDGET", "HASH_CHARS", "HASH_SCHEMA", "Principle", "TEMPLATE_PLACEHOLDERS",
    "Templates",
    "check_constitution", "diff_constitutions", "dump_constitution", "lint", "load_constitution",
    "principle_hash",
]
