"""The `cohort` CLI's thin commands: keys, job submission validation."""

from __future__ import annotations

import stat

from typer.testing import CliRunner

from cohort.cli import app

runner = CliRunner()


def test_keys_init_writes_private_keys_0600_and_refuses_to_overwrite(tmp_path):
    keys = tmp_path / "keys"
    first = runner.invoke(app, ["keys", "init", "--dir", str(keys), "--partners", "a,b"])
    assert first.exit_code == 0, first.output
    names = sorted(p.name for p in keys.iterdir())
    assert names == sorted(["operator.key", "operator.pub", "coordinator.key", "coordinator.pub", "auditor.key",
                            "auditor.pub", "a.key", "a.pub", "a.hmac", "b.key", "b.pub", "b.hmac"])  # fmt: skip
    assert stat.S_IMODE((keys / "a.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((keys / "a.hmac").stat().st_mode) == 0o600
    again = runner.invoke(app, ["keys", "init", "--dir", str(keys)])
    assert again.exit_code != 0 and "already holds keys" in str(again.exception or again.output)


def _job(tmp_path, job: str, ledger: str = 'target = "127.0.0.1:1"\nkeys-dir = "k"', flower='superlink = "deploy"'):
    path = tmp_path / "job.toml"
    path.write_text(f"[job]\n{job}\n[ledger]\n{ledger}\n[flower]\n{flower}\n")
    return runner.invoke(app, ["train", "--job", str(path), "--dry-run"])


def test_train_dry_run_prints_the_flwr_command_with_the_ledger_wired(tmp_path):
    result = _job(tmp_path, 'job-id = "j1"\nnum-rounds = 4\ncategories = ["transaction"]\ntarget-epsilon = 2.0')
    assert result.exit_code == 0, result.output
    flat = result.output.replace("\n", "")
    for fragment in ("flwr run", "deploy", "num-rounds=4", "categories=", "transaction", "ledger-target=",
                     "127.0.0.1:1", "target-epsilon=2.0"):  # fmt: skip
        assert fragment in flat, fragment


def test_train_refuses_bad_jobs_with_the_reason(tmp_path):
    bad_rounds = _job(tmp_path, 'job-id = "j"\nnum-rounds = 0')
    assert bad_rounds.exit_code == 2 and "rounds must be >= 1" in bad_rounds.output
    bad_strategy = _job(tmp_path, 'job-id = "j"\nstrategy = "fedmagic"')
    assert bad_strategy.exit_code == 2 and "fedmagic" in bad_strategy.output
    no_ledger = _job(tmp_path, 'job-id = "j"', ledger='keys-dir = "k"')
    assert no_ledger.exit_code == 2 and "ConsentLedger service" in no_ledger.output.replace("\n", " ")
    no_link = _job(tmp_path, 'job-id = "j"', flower="stream = true")
    assert no_link.exit_code == 2 and "superlink" in no_link.output
