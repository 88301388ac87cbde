"""Model quality on CDNOW (39/39 weeks) and on the synthetic three-platform data; writes docs/benchmarks.md.

    python benchmarks/bench_quality.py [--folds 5] [--seed 0] [--quick] [--no-doc]

A thin wrapper: the protocol, the models and the table live in ``models/quality.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.quality import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
