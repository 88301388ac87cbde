"""The Flower ServerApp: job preflight, strategy, round manifests, contribution valuation and rewards."""
