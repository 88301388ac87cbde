"""Seeded synthetic social-commerce event logs for several platforms that differ (non-IID), in the standard schema.

Generative story (times in days from ``start``; C = calibration_days, D = holdout_days).  Each platform has a
``PlatformProfile``; the *mechanism* below is shared by all platforms, only the profile numbers (the mix of users
and events) differ, so one platform's data tells a model something about another's.

1. Traits, per user: engagement ``E ~ LogNormal(log(events_per_day), 0.5)`` (behavioural events per engaged day),
   sociability ``Z ~ LogNormal(0, 0.5)``, price sensitivity ``S ~ Beta(*price_sensitivity)`` and loyalty
   ``Λ ~ Beta(*loyalty)``.  Acquisition day ``a ~ U(0, C/2)``, by a shared link (channel ``social_link``) with
   probability ``share_acquisition``, else by ``app`` / ``web`` / ``mini_program`` per ``channel_mix``; users
   acquired by a shared link have Λ × 0.7 (deal hunters).  Each user's first event is a ``browse`` at ``a`` on the
   acquisition channel; each later event is on the user's home channel (drawn from ``channel_mix``), except that
   20% of them have their channel drawn afresh from ``channel_mix``.
2. Engagement spell: the user is engaged on ``[a, a + τ)`` with ``τ ~ Exponential(lifetime_days ·
   (0.4 + 1.2 Λ) · Z^0.3)`` and dormant afterwards, when every rate below is multiplied by 0.06.
3. Behavioural events: a Poisson process of rate ``E``; each event is social (like / comment / share, per
   ``social_mix``) with probability ``min(0.95, social_share · Z)``, otherwise drawn from ``other_mix``.
4. Purchases: a Poisson process of rate ``purchase_rate · (E / events_per_day)^0.5 · (1 + deal_boost · S)``;
   each is a ``pay`` of ``exp(log(spend) + 0.5 (Λ - 0.5) - 0.6 (S - 0.5) + N(0, spend_sigma))``, preceded by an
   ``add_to_cart`` (probability 0.7, up to 2 days before), followed by a ``share`` (probability
   ``share_after_purchase``: group-buy invitations) and refunded 1-14 days later with probability
   ``refund_rate``.
5. Holdout window ``[C, C + D)``: steps 3-4 continue, and the social signals at the end of calibration act on
   purchases: with ``s = log1p(likes + comments + shares in the last 30 calibration days)`` and
   ``ρ = min(days since the last calibration event, 180) / 30``, the purchase rate is multiplied by
   ``exp(0.35 s - 0.25 ρ + ε)`` with an unobservable shock ``ε ~ N(0, 0.7²)``, and every amount by
   ``exp(0.1 s)``.

So churn (no purchase in the holdout) is driven by the engagement spell (visible through recency and trends), by
social activity (directly, step 5) and by loyalty / price sensitivity (visible through spend); LTV by the same plus
the spend level.  Everything is vectorised numpy; one platform's stream depends only on ``seed`` and its name.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from models.schema import CHANNELS, EVENT_TYPE_DTYPE, EVENT_TYPES

_T = {e: np.int8(i) for i, e in enumerate(EVENT_TYPES)}
DORMANT_FACTOR = 0.06
SOCIAL_RATE_EFFECT, RECENCY_RATE_EFFECT, SOCIAL_SPEND_EFFECT = 0.35, 0.25, 0.1
HOLDOUT_SHOCK_SIGMA = 0.7
CATEGORIES = ("fashion", "beauty", "food", "home", "electronics", "books", "sports", "toys")


@dataclass(frozen=True)
class Windows:
    """Calibration ``[start, calibration_end)`` and holdout ``[calibration_end, holdout_end)`` windows."""

    start: pd.Timestamp
    calibration_end: pd.Timestamp
    holdout_end: pd.Timestamp

    @classmethod
    def from_days(cls, start="2024-01-01", calibration_days: int = 180, holdout_days: int = 90) -> Windows:
        s = pd.Timestamp(start)
        return cls(s, s + pd.Timedelta(days=calibration_days), s + pd.Timedelta(days=calibration_days + holdout_days))


@dataclass(frozen=True)
class PlatformProfile:
    """The numbers that make one platform's users and events differ from another's (see the module story)."""

    name: str
    events_per_day: float
    social_share: float
    social_mix: dict = field(default_factory=dict)  # like / comment / share weights
    other_mix: dict = field(default_factory=dict)  # non-social behavioural weights
    purchase_rate: float = 0.02  # purchases per engaged day at median engagement
    deal_boost: float = 0.0  # how much price-sensitive users buy more often (deals)
    spend: float = 30.0  # median amount of one payment
    spend_sigma: float = 0.6
    price_sensitivity: tuple = (2.0, 2.0)
    loyalty: tuple = (2.0, 2.0)
    lifetime_days: float = 100.0
    share_acquisition: float = 0.1
    share_after_purchase: float = 0.0
    refund_rate: float = 0.03
    channel_mix: dict = field(default_factory=lambda: {"app": 0.6, "web": 0.3, "mini_program": 0.1})
    n_items: int = 2000


PROFILES: dict[str, PlatformProfile] = {
    "content": PlatformProfile(
        "content", events_per_day=0.22, social_share=0.35,
        social_mix={"like": 0.6, "comment": 0.3, "share": 0.1},
        other_mix={"browse": 0.72, "search": 0.1, "follow": 0.08, "add_to_cart": 0.05, "review": 0.05},
        purchase_rate=0.015, spend=25.0, loyalty=(2.0, 3.0), lifetime_days=150.0, share_acquisition=0.2,
        channel_mix={"app": 0.7, "web": 0.2, "mini_program": 0.1},
    ),
    "group_buy": PlatformProfile(
        "group_buy", events_per_day=0.12, social_share=0.3,
        social_mix={"share": 0.6, "like": 0.3, "comment": 0.1},
        other_mix={"browse": 0.6, "search": 0.15, "add_to_cart": 0.15, "remove_from_cart": 0.05, "review": 0.05},
        purchase_rate=0.03, deal_boost=1.0, spend=12.0, spend_sigma=0.5, price_sensitivity=(5.0, 2.0),
        loyalty=(2.0, 3.0), lifetime_days=130.0, share_acquisition=0.6, share_after_purchase=0.5,
        channel_mix={"mini_program": 0.7, "app": 0.25, "web": 0.05},
    ),
    "loyal": PlatformProfile(
        "loyal", events_per_day=0.035, social_share=0.12,
        social_mix={"like": 0.5, "comment": 0.2, "share": 0.3},
        other_mix={"browse": 0.6, "search": 0.2, "add_to_cart": 0.1, "follow": 0.05, "review": 0.05},
        purchase_rate=0.02, spend=80.0, spend_sigma=0.7, price_sensitivity=(2.0, 5.0), loyalty=(5.0, 2.0),
        lifetime_days=200.0, share_acquisition=0.05, refund_rate=0.05,
        channel_mix={"web": 0.5, "app": 0.5},
    ),
}


def generate_platforms(
    platforms=("content", "group_buy", "loyal"),
    users_per_platform: int | dict[str, int] = 2000,
    seed: int = 0,
    start="2024-01-01",
    calibration_days: int = 180,
    holdout_days: int = 90,
) -> dict[str, pd.DataFrame]:
    """Event logs of several synthetic platforms, keyed by platform name, in the standard event schema.

    ``platforms`` are names in ``PROFILES`` or ``PlatformProfile`` objects; ``users_per_platform`` is one size
    for all or a dict by name.  User ids are ``"<platform>-<n>"`` (unique across platforms), stored as a
    categorical of str, as are event_type, item_id (``"<platform>-item<k>"``, long-tailed popularity), category
    (item k is in ``CATEGORIES[k % 8]``) and channel.  Events are sorted by time (whole seconds).  Each frame
    carries ``attrs["windows"]``, the ``Windows`` to build features with (also ``Windows.from_days``).
    """
    windows = Windows.from_days(start, calibration_days, holdout_days)
    profiles = [PROFILES[p] if isinstance(p, str) else p for p in platforms]
    names = [p.name for p in profiles]
    if len(set(names)) != len(names):
        raise ValueError(f"platform names must be unique, got {names}")
    out = {}
    for profile in profiles:
        n = users_per_platform[profile.name] if isinstance(users_per_platform, dict) else users_per_platform
        rng = np.random.default_rng([seed, zlib.crc32(profile.name.encode())])
        out[profile.name] = _platform_events(profile, int(n), rng, windows, calibration_days, holdout_days)
    return out


class _Log:
    """Columns of events as they are generated; turned into one DataFrame at the end."""

    def __init__(self):
        self.parts: list[tuple] = []

    def add(self, user, t, etype, item, amount, channel):
        n = len(user)
        self.parts.append((user.astype(np.int32), t, np.broadcast_to(np.asarray(etype, np.int8), n),
                           np.broadcast_to(np.asarray(item, np.int32), n),
                           np.broadcast_to(np.asarray(amount, np.float64), n), channel))

    def columns(self):
        return [np.concatenate([p[i] for p in self.parts]) for i in range(6)]


def _platform_events(p: PlatformProfile, n: int, rng, w: Windows, C: int, D: int) -> pd.DataFrame:
    channels = np.array([CHANNELS.index(c) for c in p.channel_mix], dtype=np.int8)
    channel_p = np.array(list(p.channel_mix.values()), dtype=np.float64)
    channel_p /= channel_p.sum()
    u = _Users(
        E=np.exp(np.log(p.events_per_day) + 0.5 * rng.standard_normal(n)),
        Z=np.exp(0.5 * rng.standard_normal(n)),
        S=rng.beta(*p.price_sensitivity, n),
        L=rng.beta(*p.loyalty, n),
        a=rng.random(n) * C / 2,
        by_link=rng.random(n) < p.share_acquisition,
        home=channels[rng.choice(len(channels), n, p=channel_p)],
    )
    u.L = np.where(u.by_link, 0.7 * u.L, u.L)
    u.engaged_until = u.a + rng.exponential(p.lifetime_days * (0.4 + 1.2 * u.L) * u.Z**0.3)
    u.purchase_rate = p.purchase_rate * np.sqrt(u.E / p.events_per_day) * (1 + p.deal_boost * u.S)
    u.spend_mu = np.log(p.spend) + 0.5 * (u.L - 0.5) - 0.6 * (u.S - 0.5)

    log = _Log()
    everyone = np.arange(n)
    acquisition_channel = np.where(u.by_link, CHANNELS.index("social_link"), u.home).astype(np.int8)
    log.add(everyone, u.a, _T["browse"], _items(rng, n, p.n_items), 0.0, acquisition_channel)
    _behaviour(p, u, rng, log, 0.0, C)
    _purchases(p, u, rng, log, 0.0, C, rate_factor=1.0, amount_factor=1.0)
    user, t, etype, *_ = log.columns()
    s, rho = _social_signals(n, user, t, etype, C)
    _behaviour(p, u, rng, log, C, C + D)
    shock = HOLDOUT_SHOCK_SIGMA * rng.standard_normal(n)  # what the platform cannot see (life events)
    _purchases(p, u, rng, log, C, C + D,
               rate_factor=np.exp(SOCIAL_RATE_EFFECT * s - RECENCY_RATE_EFFECT * rho + shock),
               amount_factor=np.exp(SOCIAL_SPEND_EFFECT * s))

    user, t, etype, item, amount, channel = log.columns()
    kept = np.flatnonzero(t < C + D)
    seconds = np.round(t[kept] * 86_400).astype(np.int64)
    # Sort by (second, generation order): the key is unique, so the order is the same with any sort algorithm.
    key = np.sort((seconds << 32) | np.arange(len(kept), dtype=np.int64))
    rows = kept[key & 0xFFFFFFFF]
    ts = pd.Timestamp(w.start).value + (key >> 32) * 10**9
    user, etype, item, amount, channel = user[rows], etype[rows], item[rows], amount[rows], channel[rows]
    # 20% of events happen away from the user's home channel, but not the acquisition events (logged first).
    stray = (rng.random(len(rows)) < 0.2) & (rows >= n)
    channel = np.where(stray, channels[rng.choice(len(channels), len(rows), p=channel_p)], channel)
    has_item = _lookup(("search", "follow"), False, True)[etype]
    item_names = pd.Index([f"{p.name}-item{k}" for k in range(p.n_items)], dtype="str")
    item_code = np.where(has_item, item, -1)
    category_names = pd.Index(list(CATEGORIES), dtype="str")
    df = pd.DataFrame({
        "user_id": pd.Categorical.from_codes(user, categories=_user_names(p.name, n), validate=False),
        "ts": ts.view("datetime64[ns]"),
        "event_type": pd.Categorical.from_codes(etype, dtype=EVENT_TYPE_DTYPE),
        "item_id": pd.Categorical.from_codes(item_code, categories=item_names),
        "category": pd.Categorical.from_codes(np.where(has_item, item % len(CATEGORIES), -1),
                                              categories=category_names),
        "amount": amount,
        "channel": pd.Categorical.from_codes(channel, categories=pd.Index(list(CHANNELS), dtype="str")),
    }, copy=False)
    df.attrs["windows"] = w
    return df


class _Users:
    def __init__(self, **traits):
        self.__dict__.update(traits)


def _user_names(platform: str, n: int) -> pd.Index:
    width = max(len(str(n - 1)), 1)
    return pd.Index([f"{platform}-{i:0{width}d}" for i in range(n)], dtype="str")


def _items(rng, n: int, n_items: int) -> np.ndarray:
    """Item indices with a long-tailed popularity (item k is more popular than item k + 1)."""
    return np.minimum((n_items * rng.random(n) ** 3).astype(np.int32), n_items - 1)


def _activity(u: _Users, rng, w0: float, w1: float, rate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(user, time) of Poisson events in [w0, w1): ``rate`` while engaged, ``rate · DORMANT_FACTOR`` after."""
    users, times = [], []
    for lo, hi, r in ((np.maximum(u.a, w0), np.minimum(u.engaged_until, w1), rate),
                      (np.maximum(np.maximum(u.engaged_until, u.a), w0), np.full(len(u.a), w1),
                       rate * DORMANT_FACTOR)):
        length = np.maximum(hi - lo, 0.0)
        who = np.repeat(np.arange(len(lo)), rng.poisson(r * length))
        users.append(who)
        times.append(lo[who] + rng.random(len(who)) * length[who])
    return np.concatenate(users), np.concatenate(times)


def _lookup(types, inside: bool, outside: bool) -> np.ndarray:
    """A boolean table indexed by event type code: ``inside`` for ``types``, ``outside`` for the rest."""
    table = np.full(len(EVENT_TYPES), outside)
    table[[_T[e] for e in types]] = inside
    return table


def _pick(rng, weights: dict, n: int) -> np.ndarray:
    types = np.array([_T[e] for e in weights], dtype=np.int8)
    prob = np.array(list(weights.values()), dtype=np.float64)
    return types[rng.choice(len(types), n, p=prob / prob.sum())]


def _behaviour(p: PlatformProfile, u: _Users, rng, log: _Log, w0: float, w1: float) -> None:
    who, t = _activity(u, rng, w0, w1, u.E)
    social = rng.random(len(who)) < np.minimum(0.95, p.social_share * u.Z[who])
    etype = np.where(social, _pick(rng, p.social_mix, len(who)), _pick(rng, p.other_mix, len(who)))
    log.add(who, t, etype, _items(rng, len(who), p.n_items), 0.0, u.home[who])


def _purchases(p, u: _Users, rng, log: _Log, w0, w1, rate_factor, amount_factor) -> None:
    who, t = _activity(u, rng, w0, w1, u.purchase_rate * rate_factor)
    m = len(who)
    amount = np.round(np.exp(u.spend_mu[who] + p.spend_sigma * rng.standard_normal(m))
                      * np.broadcast_to(amount_factor, len(u.a))[who], 2)
    item = _items(rng, m, p.n_items)
    log.add(who, t, _T["pay"], item, amount, u.home[who])
    cart = rng.random(m) < 0.7
    log.add(who[cart], np.maximum(t[cart] - 2 * rng.random(cart.sum()), u.a[who[cart]]), _T["add_to_cart"],
            item[cart], 0.0, u.home[who[cart]])
    share = rng.random(m) < p.share_after_purchase
    log.add(who[share], t[share] + 0.5 * rng.random(share.sum()), _T["share"], item[share], 0.0,
            u.home[who[share]])
    refund = rng.random(m) < p.refund_rate
    log.add(who[refund], t[refund] + 1 + 13 * rng.random(refund.sum()), _T["refund"], item[refund],
            amount[refund], u.home[who[refund]])


def _social_signals(n: int, user, t, etype, C: float) -> tuple[np.ndarray, np.ndarray]:
    """s = log1p(social events in the last 30 calibration days); ρ = min(days since last event, 180) / 30."""
    in_cal = t < C
    social = in_cal & (t >= C - 30) & _lookup(("like", "comment", "share"), True, False)[etype]
    s = np.log1p(np.bincount(user[social], minlength=n))
    last = np.full(n, -np.inf)
    np.maximum.at(last, user[in_cal], t[in_cal])
    rho = np.minimum(C - last, 180.0) / 30.0
    return s, rho
