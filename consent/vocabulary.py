"""The versioned purpose and data-category vocabulary a consent may name.

A consent grants named purposes on named data categories; anything it does not name is forbidden. The vocabulary
is versioned so an entry written under an older vocabulary still validates. An entry names the version it was
written under in its optional `vocabulary` field; an entry WITHOUT the field was written before the field existed,
i.e. under version 1 (`UNMARKED_VERSION`), and is judged under version 1 forever, whatever CURRENT_VERSION becomes
later. Writers that use a later version must say so in the entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CURRENT_VERSION = 1
# The version an entry that carries no `vocabulary` field was written under: never CURRENT_VERSION, which moves.
UNMARKED_VERSION = 1


@dataclass(frozen=True)
class Vocabulary:
    version: int
    purposes: frozenset[str]
    data_categories: frozenset[str]
    # Data Security Law grading: higher grade = more sensitive; a job must state every category it reads.
    category_grades: dict[str, int] = field(default_factory=dict, compare=False, hash=False)


VOCABULARIES: dict[int, Vocabulary] = {
    1: Vocabulary(
        version=1,
        purposes=frozenset(
            {
                "churn_ltv_modelling",
                "recommendation",
                "third_party_marketing",
                "cross_platform_modelling",
                "analytics",
            }
        ),
        data_categories=frozenset({"basic", "behavioural", "transaction"}),
        category_grades={"basic": 1, "behavioural": 2, "transaction": 3},
    ),
}


class VocabularyError(ValueError):
    """A purpose, data category or vocabulary version that the ledger does not know."""


def vocabulary(version: int = CURRENT_VERSION) -> Vocabulary:
    if type(version) is not int:  # bool is an int subclass; "1" and 1.0 are not versions
        raise VocabularyError(f"vocabulary version must be an integer, got {version!r}")
    try:
        return VOCABULARIES[version]
    except KeyError:
        raise VocabularyError(f"unknown vocabulary version {version!r}; known: {sorted(VOCABULARIES)}") from None


def check_purposes(purposes, version: int = CURRENT_VERSION) -> list[str]:
    vocab = vocabulary(version)
    items = _as_list(purposes, "purposes")
    unknown = sorted(set(items) - vocab.purposes)
    if unknown:
        raise VocabularyError(f"unknown purpose(s) {unknown}; vocabulary v{version} has {sorted(vocab.purposes)}")
    return sorted(set(items))


def check_categories(categories, version: int = CURRENT_VERSION) -> list[str]:
    vocab = vocabulary(version)
    items = _as_list(categories, "data_categories")
    unknown = sorted(set(items) - vocab.data_categories)
    if unknown:
        raise VocabularyError(
            f"unknown data categor{'y' if len(unknown) == 1 else 'ies'} {unknown}; "
            f"vocabulary v{version} has {sorted(vocab.data_categories)}"
        )
    return sorted(set(items))


def _as_list(value, name: str) -> list[str]:
    if isinstance(value, str) or not isinstance(value, (list, tuple, set, frozenset)):
        raise VocabularyError(f"{name} must be a list of strings, got {type(value).__name__}")
    if not value:
        raise VocabularyError(f"{name} must not be empty")
    if not all(isinstance(v, str) for v in value):
        raise VocabularyError(f"{name} must contain only strings")
    return list(value)
