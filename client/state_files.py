"""Files a partner keeps in its state dir (its privacy spend, a job's fixed eligible set): names and writes.

Names come from ids the partner does not choose (job ids from the coordinator, partner ids from the data source),
so every character outside ``[A-Za-z0-9._-]`` becomes ``_``. Writes go to a temp file first and are renamed over
the old one: a crash mid-write leaves the previous content, never half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def job_file(state_dir: str, job_id: str, kind: str) -> Path:
    """``<state_dir>/<job_id>.<kind>.json``."""
    return Path(state_dir) / f"{safe_name(job_id)}.{kind}.json"


def write_json(path: Path, content) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # A temp name of its own per write: two simulation actors of one partner may write the same file at once, and a
    # shared temp name would let one rename the other's half-written file (or find it gone).
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as out:
            out.write(json.dumps(content))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
