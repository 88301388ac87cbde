"""Round audit: every round manifest re-derived from the log alone, and every withdrawal proven honoured.

For each `round.manifest` (in log order) and each partner part, the auditor recomputes the partner's eligible set
at the manifest's checkpoint — consent state from the log, the privacy budget replayed from earlier jobs (each
`model.published` charges every subject of a partner that partner's ε for the job) — and compares the Merkle root and count with what
the round committed to. Equal roots mean the round used exactly the consenting, in-budget subjects; for every
subject withdrawn, refused, expired or erased before the checkpoint the auditor also builds and checks a
non-membership proof against the committed root.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field

from consent.eligibility import EligibleSet, eligible_root, fold_eligible, prove_absent, verify_absent
from consent.store.log import LedgerStore


@dataclass
class RoundAudit:
    job_id: str
    round: int
    partner_id: str
    tree_size: int
    committed_count: int
    recomputed_count: int
    matches: bool
    absent_proven: int  # subjects who had said no / withdrawn / been erased, proven absent


@dataclass
class AuditReport:
    rounds: list[RoundAudit] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def audit_rounds(store: LedgerStore) -> AuditReport:
    report = AuditReport()
    spent: dict[tuple[str, str], float] = defaultdict(float)  # (partner, subject) -> ε charged by closed jobs
    used: dict[tuple[str, str], list[str]] = {}  # (job, partner) -> the eligible set its rounds used
    events = store.find_by_type("round.manifest") + store.find_by_type("model.published")
    for idx, data in sorted(events):
        entry = json.loads(data)
        body = entry["body"]
        if entry["type"] == "model.published":
            # Budgets are charged when a job closes: every subject of the partner, that partner's job ε.
            for partner, eps in body.get("epsilon_by_partner", {}).items():
                for ref in used.get((body["job_id"], partner), []):
                    spent[(partner, ref)] += float(eps)
            continue
        cap = body.get("lifetime_epsilon")
        target = float(body.get("dp", {}).get("target_epsilon", 0.0))
        for part in body.get("partners", []):
            partner = part["partner_id"]
            size = int(body["tree_size"])
            history = list(store.consent_events(partner, size))
            refs = fold_eligible(history, body["purpose"], body["categories"], body.get("as_of"))
            if cap is not None:
                refs = [r for r in refs if spent[(partner, r)] + target <= cap + 1e-9]
            used[(body["job_id"], partner)] = refs
            root = eligible_root(refs)
            matches = root.hex() == part["eligible_root"] and len(refs) == int(part["eligible_count"])
            if not matches:
                report.problems.append(
                    f"entry {idx}: round {body['round']} of job {body['job_id']}: {partner}'s committed eligible set "
                    f"({part['eligible_count']} subjects) is not the set the log allows ({len(refs)} subjects)"
                )
            eligible = EligibleSet(partner, body["purpose"], tuple(body["categories"]), size, refs, root)
            proven = 0
            for ref in _said_no(history) - set(refs):
                proof = prove_absent(eligible, ref)
                if verify_absent(proof, bytes.fromhex(part["eligible_root"]), int(part["eligible_count"])):
                    proven += 1
                else:
                    report.problems.append(f"entry {idx}: subject {ref} withdrew/erased but is not provably absent")
            report.rounds.append(RoundAudit(body["job_id"], int(body["round"]), partner, size,
                                            int(part["eligible_count"]), len(refs), matches, proven))  # fmt: skip
    return report


def _said_no(events) -> set[str]:
    """Subjects whose log history holds a refusal, withdrawal, expiry or erasure request."""
    return {ref for ref, kind, *_ in events if kind in ("refused", "withdrawn", "expired", "erasure")}
