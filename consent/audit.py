"""Round audit: every round manifest re-derived from the log alone, and every withdrawal proven honoured.

For each `round.manifest` (in log order) and each partner part, the auditor recomputes the partner's eligible set
at the manifest's checkpoint — consent state from the log, the privacy budget replayed from the manifests before it
— and compares the Merkle root and count with what the round committed to.

The budget rule replayed is the coordinator's (`server.ledger_hooks`): each round charges every subject in the
partner's eligible set of the job the round's ε increment (the partner's cumulative ε in the part minus what the
job already charged it), so a job that stopped early has charged the rounds that closed. A job's lifetime-cap test
counts what subjects spent before the job: its own earlier rounds are already inside its target ε, and a partner's
eligible set stays the one its first round committed to. Logs written when budgets were charged at
`model.published` replay the same for jobs that finished; only a job that stopped early differs (it was never
charged then). Equal roots mean the round used exactly the consenting, in-budget subjects; for every
subject withdrawn, refused, expired or erased before the checkpoint the auditor also builds and checks a
non-membership proof against the committed root. A secure round's DP statement is checked for consistency too
(``secure_round_problems``), and so are the signed masking keys a secure job's `job.started` records
(``masking_key_problems``).
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field

from consent import masking_keys
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


def audit_rounds(store: LedgerStore, reuse: bool = True) -> AuditReport:
    """``reuse=False`` works every round out afresh (the same report, slower: benchmarks and cross-checks)."""
    report = AuditReport()
    spent: dict[tuple[str, str], float] = defaultdict(float)  # (partner, subject) -> ε charged so far
    used: dict[tuple[str, str], list[str]] = {}  # (job, partner) -> the eligible set its first round used
    charged: dict[tuple[str, str], float] = defaultdict(float)  # (job, partner) -> ε the job charged its subjects
    # Every round of a job sits at the job's checkpoint, so its consent fold and (when the round commits what the
    # rounds before it did) its non-membership proofs are the same: each is worked out once, not once a round
    # (a secure job has hundreds of rounds; proofs were 83% of auditing one).
    folds = _Recent(16 if reuse else 0)  # (partner, tree size, purpose, categories, day) -> (consenting, said no)
    absences = _Recent(16 if reuse else 0)  # (fold key, committed root, count, recomputed root) -> proofs' outcome
    for idx, data in sorted(store.find_by_type("round.manifest")):
        body = json.loads(data)["body"]
        report.problems += [f"entry {idx}: {problem}" for problem in secure_round_problems(body)]
        cap = body.get("lifetime_epsilon")
        target = float(body.get("dp", {}).get("target_epsilon", 0.0))
        for part in body.get("partners", []):
            partner = part["partner_id"]
            size = int(body["tree_size"])
            fold = (partner, size, body["purpose"], tuple(body["categories"]), body.get("as_of"))
            folded = folds.get(fold)
            if folded is None:
                history = list(store.consent_events(partner, size))
                folded = folds[fold] = (fold_eligible(history, body["purpose"], body["categories"], body.get("as_of")),
                                        _said_no(history))  # fmt: skip
            refs, said_no = folded
            job = (body["job_id"], partner)
            if cap is not None:
                own = set(used.get(job, ()))
                before = {r: _spent_before(spent[(partner, r)], r in own, charged[job]) for r in refs}
                refs = [r for r in refs if before[r] + target <= cap + 1e-9]
            used.setdefault(job, refs)
            _charge(spent, charged, job, used[job], float(part.get("epsilon", 0.0)))
            root = eligible_root(refs)
            matches = root.hex() == part["eligible_root"] and len(refs) == int(part["eligible_count"])
            if not matches:
                report.problems.append(
                    f"entry {idx}: round {body['round']} of job {body['job_id']}: {partner}'s committed eligible set "
                    f"({part['eligible_count']} subjects) is not the set the log allows ({len(refs)} subjects)"
                )
            absence = (fold, part["eligible_root"], int(part["eligible_count"]), root)
            outcome = absences.get(absence)
            if outcome is None:
                eligible = EligibleSet(partner, body["purpose"], tuple(body["categories"]), size, refs, root)
                outcome = absences[absence] = _prove_absent(eligible, said_no - set(refs), part)
            proven, unprovable = outcome
            report.problems += [f"entry {idx}: subject {ref} withdrew/erased but is not provably absent"
                                for ref in unprovable]  # fmt: skip
            report.rounds.append(RoundAudit(body["job_id"], int(body["round"]), partner, size,
                                            int(part["eligible_count"]), len(refs), matches, proven))  # fmt: skip
    report.problems += masking_key_problems(store)
    return report


def masking_key_problems(store: LedgerStore) -> list[str]:
    """Each masking key a secure job's `job.started` records must be signed, for that job, by the ledger key its
    partner held when the job started (a key rotated out later still vouches for it; one rotated out before, not)."""
    problems = []
    for idx, data in sorted(store.find_by_type("job.started")):
        body = json.loads(data)["body"]
        for partner, signed in sorted(body.get("masking_keys", {}).items()):
            keys = [k.public_key for k in store.keys_at(partner, idx) if k.role == "partner"]
            if not any(_signed_by(signed, body["job_id"], partner, key) for key in keys):
                problems.append(f"entry {idx}: job {body['job_id']}: the masking key of {partner} is not signed by "
                                "the ledger key that partner held when the job started")  # fmt: skip
    return problems


def _signed_by(signed: str, job_id: str, partner: str, key: str) -> bool:
    try:
        masking_keys.check(signed, job_id, partner, key)
    except masking_keys.MaskingKeyError:
        return False
    return True


def _prove_absent(eligible: EligibleSet, absent: set[str], part: dict) -> tuple[int, list[str]]:
    """Proves each of ``absent`` is not in the set ``part`` committed to: (how many proofs verify, the refs whose
    proof does not)."""
    committed, count = bytes.fromhex(part["eligible_root"]), int(part["eligible_count"])
    unprovable = sorted(ref for ref in absent if not verify_absent(prove_absent(eligible, ref), committed, count))
    return len(absent) - len(unprovable), unprovable


class _Recent(OrderedDict):
    """A dict that keeps its last ``size`` entries: the folds of the jobs whose rounds are being read (jobs can
    interleave in the log), not one list of subjects per job the ledger ever ran."""

    def __init__(self, size: int = 16):
        super().__init__()
        self.size = size

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


def secure_round_problems(body: dict) -> list[str]:
    """What is wrong with a secure round's DP statement (``aggregation``, server/secure_aggregation.py), from the
    manifest alone: fewer contributing partners than the noise divisor (then the sum carried less than the total
    noise its ε assumes), a partner reporting another noise multiplier, shares that do not add up to the total, a
    collusion threshold other than the one the seed shares are split with (``noise_partners - 1``, at least 1), a
    void round (its sum stayed masked) whose model changed."""
    agg = body.get("aggregation")
    if not agg:
        return []
    where = f"round {body.get('round')} of job {body.get('job_id')}"
    problems = []
    parts = body.get("partners", [])
    sigma, share, m = float(agg["noise_multiplier"]), float(agg["partner_noise_multiplier"]), int(agg["noise_partners"])
    if len(parts) < m:
        problems.append(f"{where}: secure sum of {len(parts)} partner(s), but each added the noise share of {m}")
    if abs(share * math.sqrt(m) - sigma) > 1e-6 * max(1.0, sigma):
        problems.append(f"{where}: {m} shares of noise multiplier {share:g} do not make the total {sigma:g}")
    colluders = agg.get("colluders_to_unmask")  # absent from manifests of jobs run before self masks
    if colluders is not None and int(colluders) != masking_keys.share_threshold(m):
        problems.append(f"{where}: states {colluders} colluding partner(s) to unmask a vector, but seed shares of "
                        f"{m} noise shares are split {masking_keys.share_threshold(m)}-of-n")  # fmt: skip
    if "voided" in agg and body.get("model_in_hash") != body.get("model_out_hash"):
        problems.append(f"{where}: void (its sum stayed masked), yet the model changed "
                        f"({body.get('model_in_hash')} -> {body.get('model_out_hash')})")  # fmt: skip
    for part in parts:
        if abs(float(part.get("noise_multiplier", sigma)) - sigma) > 1e-9 * max(1.0, sigma):
            problems.append(f"{where}: {part['partner_id']} reports noise multiplier {part['noise_multiplier']}, the "
                            f"secure sum {sigma:g}")  # fmt: skip
    return problems


def _spent_before(spent: float, in_job: bool, job_charge: float) -> float:
    """A subject's ε before the job: what it has spent, less what this job already charged it."""
    return spent - job_charge if in_job else spent


def _charge(spent: dict, charged: dict, job: tuple[str, str], refs: list[str], epsilon: float) -> None:
    """The round's increment on every subject of the job's set; ε in a part is cumulative over the job."""
    increment = max(0.0, epsilon - charged[job])
    for ref in refs:
        spent[(job[1], ref)] += increment
    charged[job] = max(charged[job], epsilon)


def _said_no(events) -> set[str]:
    """Subjects whose log history holds a refusal, withdrawal, expiry or erasure request."""
    return {ref for ref, kind, *_ in events if kind in ("refused", "withdrawn", "expired", "erasure")}
