"""What happened to the users who withdrew or were erased between the demo's two jobs, proven from the ledger.

For each such subject and each partner: an RFC 9162 inclusion proof that it WAS in the eligible set job 1's rounds
committed to (it had consented then), and a non-membership proof that it is NOT in job 2's committed set. Both are
checked against the roots in the signed round manifests, not against anything the demo remembers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from consent.eligibility import prove_absent, prove_present, verify_absent, verify_present
from server.ledger_hooks import LedgerBinding
from server.runner import JobResult


@dataclass
class RightsEvidence:
    subjects: int = 0
    used_before: int = 0  # inclusion in job 1's committed eligible set verified
    absent_after: int = 0  # non-membership in job 2's committed eligible set verified
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and self.used_before == self.subjects and self.absent_after == self.subjects


def rights_evidence(binding: LedgerBinding, left_refs: dict[str, list[str]], before: JobResult,
                    after: JobResult) -> RightsEvidence:  # fmt: skip
    evidence = RightsEvidence()
    for partner, refs in sorted(left_refs.items()):
        # The sets preflight admitted (re-deriving them now would see budgets both jobs have since charged); they
        # must equal what the signed manifests committed to, checked next.
        was = binding.members.get((before.job.job_id, partner))
        now = binding.members.get((after.job.job_id, partner))
        if was is None or now is None:
            evidence.problems.append(f"{partner}: did not take part in both jobs")
            continue
        try:
            was_root, was_count = _committed(before, partner)
            now_root, now_count = _committed(after, partner)
        except ValueError as exc:
            evidence.problems.append(str(exc))
            continue
        if (was.root, was.count) != (was_root, was_count) or (now.root, now.count) != (now_root, now_count):
            evidence.problems.append(f"{partner}: the ledger's eligible set differs from what the rounds committed to")
            continue
        for ref in refs:
            evidence.subjects += 1
            if ref in was:
                index, proof = prove_present(was, ref)
                if verify_present(ref, index, proof, was_root, was_count):
                    evidence.used_before += 1
            if ref in now:
                evidence.problems.append(f"{partner}: subject {ref} withdrew or was erased but is in job 2's set")
            elif verify_absent(prove_absent(now, ref), now_root, now_count):
                evidence.absent_after += 1
            else:
                evidence.problems.append(f"{partner}: no valid non-membership proof for subject {ref}")
    return evidence


def _committed(result: JobResult, partner: str) -> tuple[bytes, int]:
    """The eligible-set root and count the job's rounds committed to for ``partner`` (one set per job)."""
    parts = {(p.eligible_root, p.eligible_count) for m in result.manifests for p in m.partners if p.partner_id == partner}
    if len(parts) != 1:
        raise ValueError(f"{partner}: job {result.job.job_id} committed to {len(parts)} different eligible sets")
    root, count = parts.pop()
    return bytes.fromhex(root), int(count)
