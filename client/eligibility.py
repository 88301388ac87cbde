"""Who a partner may train on: the consent ledger's eligible set at the job's checkpoint, behind a small interface.

A ``Ledger`` is anything with the two read-only methods below; the client never sees consents, only the answer.
In simulation the ledger object can be handed to ``client.app.make_client_app(ledger=...)`` (it is pickled to the
Ray actors with the app; ``LedgerByUrl(url)`` when it holds a connection), or named by a ``ledger-url`` in the node
or run config and opened here in each process.

Plugging in the real ledger (``consent/``): register an opener for its URL scheme (at the bottom of this module)::

    register_ledger_opener("sqlite", open_view)  # -> ConsentLedgerView(consent Ledger, {partner_id: PartnerDesk})
    register_ledger_opener("grpc", open_client)  # deployment: a client of the ConsentLedger gRPC service

or name a factory directly: ``ledger-url = "py:package.module:factory?..."`` calls ``factory(url)``.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from consent.eligibility import eligible_root


class EligibilityError(RuntimeError):
    """The ledger's answer cannot be used (inconsistent commitment, unknown scheme, ...)."""


@dataclass(frozen=True)
class EligibleSet:
    """The subjects of one partner eligible for (purpose, categories) at ledger size ``tree_size``.

    ``root`` is the RFC 9162 Merkle root (hex) over the sorted ``subject_refs`` (see ``eligible_set_root``), so an
    auditor can prove that a withdrawn subject was not in the set with two adjacent leaves.
    """

    subject_refs: tuple[str, ...]
    count: int
    root: str

    @classmethod
    def of(cls, subject_refs: Sequence[str]) -> EligibleSet:
        refs = tuple(sorted(set(subject_refs)))
        return cls(subject_refs=refs, count=len(refs), root=eligible_set_root(refs))


def eligible_set_root(sorted_refs: Sequence[str]) -> str:
    """Merkle root (hex) of the eligible set, exactly as the ledger commits to it (``consent.eligibility``):
    one leaf per subject_ref (its 16 bytes), in ascending order."""
    return eligible_root(list(sorted_refs)).hex()


@runtime_checkable
class Ledger(Protocol):
    """The two questions a partner asks the consent ledger. Both are answered at a fixed checkpoint."""

    def eligible_subjects(
        self, partner_id: str, purpose: str, categories: Sequence[str], tree_size: int
    ) -> EligibleSet: ...

    def subject_refs_for(self, partner_id: str, user_ids: Sequence[str]) -> Mapping[str, str]: ...


def eligible_subjects(
    ledger: Ledger, partner_id: str, purpose: str, categories: Sequence[str], tree_size: int
) -> EligibleSet:
    """The ledger's eligible set, checked: sorted unique refs, a count and a root that match the refs.

    The root is recomputed here rather than trusted, because it is what this partner commits to in the manifest.
    """
    answer = ledger.eligible_subjects(partner_id, purpose, sorted(categories), tree_size)
    refs = tuple(answer.subject_refs)
    if list(refs) != sorted(set(refs)):
        raise EligibilityError(f"ledger returned an unsorted or duplicated eligible set for {partner_id}")
    checked = EligibleSet.of(refs)
    root = answer.root.hex() if isinstance(answer.root, bytes) else str(answer.root)
    if int(answer.count) != checked.count or root != checked.root:
        raise EligibilityError(
            f"ledger's eligible-set commitment for {partner_id} at tree size {tree_size} does not match its "
            f"subject_refs (count {answer.count} vs {checked.count}, root {root} vs {checked.root})"
        )
    return checked


def subject_refs_for(ledger: Ledger, partner_id: str, user_ids: Sequence[str]) -> dict[str, str]:
    """``{user_id: subject_ref}`` for the partner's users the ledger knows (erased users are simply absent)."""
    return dict(ledger.subject_refs_for(partner_id, list(user_ids)))


class ConsentLedgerView:
    """``Ledger`` over the consent package's objects: ``consent.ledger.Ledger.eligible_set`` answers eligibility,
    each partner's ``consent.partner.PartnerDesk`` maps its user ids to subject_refs (HMAC with its own secret,
    never creating a ref). Open it in the process that uses it (it holds a database connection)."""

    def __init__(self, ledger, desks: Mapping[str, object]) -> None:
        self.ledger = ledger
        self.desks = dict(desks)

    def eligible_subjects(self, partner_id: str, purpose: str, categories: Sequence[str], tree_size: int):
        return self.ledger.eligible_set(partner_id, purpose, list(categories), tree_size)

    def subject_refs_for(self, partner_id: str, user_ids: Sequence[str]) -> Mapping[str, str]:
        return self.desks[partner_id].subject_refs(list(user_ids), create=False)


@dataclass(frozen=True)
class LedgerByUrl:
    """A picklable stand-in that opens ``url`` (``open_ledger``) in whichever process first asks it something:
    hand this to ``make_client_app`` / ``simulate_job`` when the ledger itself (a database connection) cannot
    travel to the Ray actors."""

    url: str

    def eligible_subjects(self, partner_id: str, purpose: str, categories: Sequence[str], tree_size: int):
        return open_ledger(self.url).eligible_subjects(partner_id, purpose, categories, tree_size)

    def subject_refs_for(self, partner_id: str, user_ids: Sequence[str]) -> Mapping[str, str]:
        return open_ledger(self.url).subject_refs_for(partner_id, user_ids)


LedgerOpener = Callable[[str], Ledger]
_openers: dict[str, LedgerOpener] = {}
_opened: dict[str, Ledger] = {}
_lock = threading.Lock()


def register_ledger_opener(scheme: str, opener: LedgerOpener) -> None:
    """Make ``open_ledger`` hand URLs of ``scheme`` (the part before the first ':') to ``opener``."""
    _openers[scheme] = opener


def open_ledger(url: str) -> Ledger:
    """The ledger named by ``url``, opened once per process (a checkpointed view is immutable, so sharing is safe)."""
    if not url:
        raise EligibilityError(
            "no consent ledger configured: set ledger-url in the node config (deployment) or the run config"
        )
    with _lock:
        if url not in _opened:
            _opened[url] = _open(url)
        return _opened[url]


def _open(url: str) -> Ledger:
    scheme = url.split(":", 1)[0]
    if scheme == "py":
        return _factory(url)(url)
    opener = _openers.get(scheme)
    if opener is None:
        raise EligibilityError(
            f"no ledger opener for {scheme!r} URLs ({url!r}); known: {sorted(_openers) + ['py']}. "
            "Register one with client.eligibility.register_ledger_opener."
        )
    return opener(url)


def _factory(url: str) -> LedgerOpener:
    """``py:package.module:attr?anything`` -> ``package.module.attr``."""
    target = url[len("py:") :].split("?", 1)[0]
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise EligibilityError(f"ledger URL {url!r} is not of the form py:package.module:factory[?...]")
    return getattr(importlib.import_module(module_name), attr)

