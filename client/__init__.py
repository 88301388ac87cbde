"""The Flower ClientApp a partner runs: eligible rows only, DP-SGD training, update plus manifest part."""
