"""Split one event data set into partners' data sets, reproducibly: every event of a user goes to one partner.

Rows without a user id belong to no partner (validated data has none).  A user's partner depends only on
``hash(seed, user_id)`` (BLAKE2b, so the same on every machine and pandas version) and, for non-IID splits, on the
calibration-window events (before ``calibration_end``) of the users, never on row order and never on anything
in or after the holdout window: the holdout outcomes a model is scored on cannot leak into who holds which user.
"""

from __future__ import annotations

import hashlib
import string

import numpy as np
import pandas as pd

from models.schema import EVENT_TYPES, SPEND_EVENT, vocabulary_codes


def partner_names(n_partners: int) -> list[str]:
    """"A", "B", ... (then "P26", "P27", ... past 26 partners)."""
    return [string.ascii_uppercase[i] if i < 26 else f"P{i}" for i in range(n_partners)]


def user_uniforms(user_ids, seed: int, salt: str = "") -> np.ndarray:
    """A uniform number in [0, 1) per user id: the first 8 bytes of BLAKE2b(f"{seed}:{salt}:{user_id}")."""
    prefix = f"{seed}:{salt}:"
    digests = b"".join(hashlib.blake2b((prefix + str(u)).encode(), digest_size=8).digest() for u in user_ids)
    return np.frombuffer(digests, dtype=">u8").astype(np.float64) / 2.0**64


def partition_by_hash(events: pd.DataFrame, shares: dict[str, float], seed: int = 0) -> dict[str, pd.DataFrame]:
    """IID split: each user goes to partner k with probability ``shares[k]`` (normalised to sum to 1).

    The user's uniform ``user_uniforms(user_id, seed)`` is placed on the cumulative shares, in the order of
    ``shares``; the same seed and shares always give the same partner for the same user.
    """
    if not shares or any(v < 0 for v in shares.values()) or sum(shares.values()) <= 0:
        raise ValueError(f"shares must be non-negative and not all zero, got {shares}")
    codes, users = _user_codes(events)
    edges = np.cumsum(list(shares.values())) / sum(shares.values())
    partner_of_user = np.minimum(np.searchsorted(edges, user_uniforms(users, seed), side="right"), len(edges) - 1)
    return _split(events, partner_of_user, codes, list(shares))


def partition_noniid(
    events: pd.DataFrame,
    n_partners: int,
    by: str = "spend_tier",
    seed: int = 0,
    mixing: float = 0.2,
    *,
    calibration_end,
) -> dict[str, pd.DataFrame]:
    """Non-IID split into partners "A", "B", ... that each hold mostly one kind of user.

    Only events before ``calibration_end`` (required: the end of the calibration window the features are built
    over) decide the split, so changing, adding or removing events at or after it never moves a user who has an
    earlier event.  Users with an event before ``calibration_end`` are ranked and cut into ``n_partners`` equal
    tiers, tier i going to partner i:

    * ``by="spend_tier"``: by total ``pay`` amount before ``calibration_end``, so A holds the lowest spenders and
      the last partner the highest;
    * ``by="cohort"``: by acquisition time = the user's first event of any type before ``calibration_end``, so A
      holds the earliest cohort.  (Not the first *purchase*: for a user who first buys in the holdout that would
      be a holdout outcome.  On purchase-only data such as CDNOW the two are the same.)

    Ties are broken by the user's hash.  Users whose events all lie at or after ``calibration_end`` have no
    calibration row and are not ranked (so they do not shift the tiers of the others): they go to the last
    partner for ``cohort`` (the newest cohort) and to A for ``spend_tier`` (no calibration spend).  Then a share
    ``mixing`` of all users (chosen by hash) is reassigned to a uniformly random partner (by hash), so every
    partner still sees every kind of user.
    """
    if by not in ("spend_tier", "cohort"):
        raise ValueError(f'by must be "spend_tier" or "cohort", got {by!r}')
    if n_partners < 1 or not 0.0 <= mixing <= 1.0:
        raise ValueError("need n_partners >= 1 and 0 <= mixing <= 1")
    if calibration_end is None:
        raise ValueError("calibration_end is required: a non-IID split must not look at holdout events")
    codes, users = _user_codes(events)
    n_users = len(users)
    ts = events["ts"].to_numpy(dtype="datetime64[ns]")
    before = (codes >= 0) & (ts < pd.Timestamp(calibration_end).as_unit("ns").to_datetime64())
    ranked = np.bincount(codes[before], minlength=n_users) > 0  # users with a calibration-window event
    if by == "spend_tier":
        counted = before & (vocabulary_codes(events["event_type"]) == EVENT_TYPES.index(SPEND_EVENT))
        amount = events["amount"].to_numpy(dtype=np.float64)
        score = np.bincount(codes[counted], weights=amount[counted], minlength=n_users)
        unranked_partner = 0
    else:
        score = _first(codes[before], ts[before].view(np.int64).astype(np.float64), n_users)
        unranked_partner = n_partners - 1
    tie_break = user_uniforms(users, seed, "tie")
    who = np.flatnonzero(ranked)
    rank = np.empty(len(who), dtype=np.int64)
    rank[np.lexsort((tie_break[who], score[who]))] = np.arange(len(who))
    partner_of_user = np.full(n_users, unranked_partner, dtype=np.int64)
    partner_of_user[who] = rank * n_partners // max(len(who), 1)
    mixed = user_uniforms(users, seed, "mix") < mixing
    random_partner = np.minimum((user_uniforms(users, seed, "partner") * n_partners).astype(np.int64),
                                n_partners - 1)
    partner_of_user = np.where(mixed, random_partner, partner_of_user)
    return _split(events, partner_of_user, codes, partner_names(n_partners))


def _first(codes: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    out = np.full(n, np.inf)
    np.minimum.at(out, codes, values)
    return out


def _user_codes(events: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    s = events["user_id"]
    if isinstance(s.dtype, pd.CategoricalDtype):
        return s.cat.codes.to_numpy().astype(np.int64), np.asarray(s.cat.categories.astype(str), dtype=object)
    codes, uniques = pd.factorize(s)
    return codes.astype(np.int64), np.asarray(uniques, dtype=object)


def _split(events: pd.DataFrame, partner_of_user: np.ndarray, codes: np.ndarray, names: list[str]) -> dict:
    partner_of_row = np.where(codes >= 0, np.append(partner_of_user, -1)[codes], -1)
    out = {}
    for k, name in enumerate(names):
        part = events.loc[partner_of_row == k].reset_index(drop=True)
        if isinstance(part["user_id"].dtype, pd.CategoricalDtype):
            # A partner's frame must not carry the other partners' user ids, even as unused categories.
            part["user_id"] = part["user_id"].cat.remove_unused_categories()
        out[name] = part
    return out
