"""The consent ledger: an append-only, RFC 9162 verifiable log of consents, rounds and rewards."""
