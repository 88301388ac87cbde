"""What the secure sum costs per round: a partner's encode + double mask (its pair masks, a fresh self-mask seed
split into sealed Shamir shares), its reveal (opening its peers' shares), the server's sum + unmask (rebuilding the
survivors' seeds; with and without a dropout's pair masks to remove), and the bytes on the wire, for the Cohort model
and for larger models; and, once per job, what a partner pays to check its peers' signed masking keys against a
real SQLite ledger.

    python benchmarks/bench_secure_sum.py [--partners 3] [--sizes 3556,100000,1000000] [--repeats 20] [--doc]

Everything is the product code (``client.secure_sum``, ``client.masking``, ``client.peer_keys`` over
``client.consent_link.ConsentLink``); keys are real X25519 and Ed25519 keys. The Cohort
model (``ChurnLTVNet``, 64×32 trunk, CDNOW's features) has 3,556 parameters. A masked update is 8 bytes a parameter
(uint64 words) against 4 for the float32 weights of a plain round.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench_federated_cdnow import load_average, machine, update_subsection  # noqa: E402
from client.secure_sum import (  # noqa: E402
    SEALED_SHARE_BYTES,
    decode,
    encode,
    join_seed,
    masked,
    new_private_key,
    new_seed,
    open_share,
    pair_key,
    public_hex,
    remove_masks,
    round_key,
    seal_share,
    split_seed,
    sum_words,
)
from consent.masking_keys import share_threshold  # noqa: E402


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def measure(partners: int, size: int, repeats: int, noise_partners: int = 2) -> dict:
    names = [f"p{i}" for i in range(partners)]
    keys = {p: new_private_key() for p in names}
    pairs = {(a, b): pair_key(keys[a], public_hex(keys[b]), "bench", a, b) for a in names for b in names if a != b}
    threshold = share_threshold(noise_partners)
    rng = np.random.default_rng(0)
    vectors = {p: rng.normal(0, 100, size=size) for p in names}

    def partner_round(me: str) -> tuple[np.ndarray, dict, bytes]:
        """What ``client.masking.mask_update`` does after the gradient: pair keys, seed, sealed shares, masks."""
        peers = [p for p in names if p != me]
        round_keys = {peer: round_key(pairs[(me, peer)], 1) for peer in peers}
        seed = new_seed()
        shares = split_seed(seed, peers, threshold)
        sealed = {peer: seal_share(pairs[(me, peer)], "bench", 1, me, peer, shares[peer]) for peer in peers}
        return masked(encode(vectors[me]), me, round_keys, seed), sealed, seed

    me = names[0]
    partner_ms = median_ms(lambda: partner_round(me), repeats)
    rounds = {p: partner_round(p) for p in names}
    words = {p: r[0] for p, r in rounds.items()}

    def opened(survivors):
        """Each survivor's reveal: the shares its surviving peers sealed for it, opened."""
        return {(h, o): open_share(pairs[(h, o)], "bench", 1, o, h, rounds[o][1][h])
                for h in survivors for o in survivors if o != h}  # fmt: skip

    reveal_ms = median_ms(lambda: [open_share(pairs[(me, o)], "bench", 1, o, me, rounds[o][1][me])
                                   for o in names if o != me], repeats)  # fmt: skip

    def unmask(survivors, revealed):
        shares = opened(survivors)
        seeds = [join_seed([shares[(h, o)] for h in survivors if h != o], threshold, o) for o in survivors]
        return decode(remove_masks(sum_words([words[p] for p in survivors]), revealed, seeds))

    server_ms = median_ms(lambda: unmask(names, {}), repeats)
    dropped, survivors = names[-1], names[:-1]
    revealed = {(s, dropped): round_key(pairs[(s, dropped)], 1) for s in survivors}
    dropout_ms = median_ms(lambda: unmask(survivors, revealed), repeats)
    exact = unmask(survivors, revealed)
    error = float(np.abs(exact - sum(vectors[p] for p in survivors)).max())
    return {"size": size, "partner_ms": partner_ms, "reveal_ms": reveal_ms, "server_ms": server_ms,
            "dropout_ms": dropout_ms, "bytes": 8 * size + SEALED_SHARE_BYTES * (partners - 1), "error": error,
            "threshold": threshold}  # fmt: skip


def measure_key_check(partners: int, repeats: int) -> dict:
    """One partner signing its masking key, and checking its peers' keys with an empty cache (a job's first round):
    a ledger lookup and an Ed25519 verification per peer, on a real SQLite ledger."""
    from client.consent_link import ConsentLink
    from client.peer_keys import sign_masking_key, verified_roster
    from consent.keys import Identity
    from consent.ledger import Ledger, LedgerReader

    names = [f"p{i}" for i in range(partners)]
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Ledger.open(f"{tmp}/ledger.db", Identity.generate("operator", "operator"))
        for name in names:
            identity = Identity.generate(name, "partner")
            identity.save(tmp)
            ledger.register(identity)
        reader = LedgerReader.open_readonly(f"{tmp}/ledger.db")
        link = ConsentLink(reader, {}, keys_dir=tmp)
        signed = {p: sign_masking_key(link, "bench", p, public_hex(new_private_key())) for p in names}
        sign_ms = median_ms(lambda: sign_masking_key(link, "bench", names[0], public_hex(new_private_key())), repeats)
        peers = {p: k for p, k in signed.items() if p != names[0]}
        check_ms = median_ms(lambda: verified_roster(link, "bench", peers, set()), repeats)
        reader.close()
        ledger.close()
    return {"sign_ms": sign_ms, "check_ms": check_ms, "peers": len(peers)}


def report(args, rows: list[dict], keys: dict) -> str:
    lines = [
        f"Command: `python benchmarks/bench_secure_sum.py --partners {args.partners} --sizes {args.sizes} "
        f"--repeats {args.repeats}`",
        "",
        f"Machine: {machine()}; load average {load_average()}. Median of {args.repeats} runs each; "
        f"{args.partners} partners, real X25519 keys, ChaCha20 pair and self masks, self-mask seeds split "
        f"{rows[0]['threshold']}-of-{args.partners - 1} (min-partners 2) with Flower's Shamir and sealed with "
        "ChaCha20-Poly1305 (`client/secure_sum.py`).",
        "",
        "| parameters | partner: encode + double mask + sealed seed shares | partner: its reveal (open its peers' "
        "shares) | server: sum + rebuild seeds + unmask + decode | server: same, one dropout's pair masks removed "
        "| masked update on the wire | max error of the unmasked sum |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['size']:,} | {r['partner_ms']:.2f} ms | {r['reveal_ms']:.2f} ms | {r['server_ms']:.2f} ms"
                     f" | {r['dropout_ms']:.2f} ms | {r['bytes'] / 1e3:,.1f} kB | {r['error']:.1e} |")
    lines += [
        "",
        f"Once per job, not per round: a partner signs its masking key with its Ed25519 ledger key in "
        f"{keys['sign_ms']:.2f} ms (the key file read included), and checks its {keys['peers']} peers' signed keys "
        f"against a SQLite ledger in {keys['check_ms']:.2f} ms (a key lookup and a verification each; "
        "`client/peer_keys.py`).",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--partners", type=int, default=3)
    parser.add_argument("--sizes", default="3556,100000,1000000")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--doc", action="store_true")
    args = parser.parse_args(argv)
    rows = [measure(args.partners, int(s), args.repeats) for s in args.sizes.split(",")]
    text = report(args, rows, measure_key_check(args.partners, args.repeats))
    print(text)
    if args.doc:
        update_subsection("Secure sum cost per round", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
