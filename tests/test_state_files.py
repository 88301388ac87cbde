"""client.state_files: a partner's state files are replaced whole, also when two actors write one at once."""

from __future__ import annotations

import json
import threading

from client.state_files import job_file, safe_name, write_json


def test_names_keep_only_safe_characters():
    assert safe_name("job 1/../x") == "job_1_.._x"
    assert job_file("/state", "a:b", "privacy").as_posix() == "/state/a_b.privacy.json"


def test_concurrent_writers_of_one_file_neither_fail_nor_leave_temp_files(tmp_path):
    path, errors = tmp_path / "job.eligible.json", []

    def writer(i: int) -> None:
        for k in range(300):
            try:
                write_json(path, {"writer": i, "k": k, "pad": "x" * 20_000})
            except Exception as exc:  # with one shared temp name: FileNotFoundError from the second rename
                errors.append(repr(exc))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [p.name for p in tmp_path.iterdir()] == ["job.eligible.json"]
    assert json.loads(path.read_text())["k"] == 299
