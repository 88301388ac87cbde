"""The ConsentLedger gRPC service: request signing, role rules and group-committed appends over `consent.ledger`.

Start it with `consent.service.server.serve(...)`; talk to it with `consent.client.LedgerClient`.
"""
