"""docker-compose.yml: no container engine runs here, so the file is checked structurally and every service's
command is one the test suite runs natively (the ledger, SuperLink, SuperNodes and `cohort train` elsewhere)."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import yaml

from cohort.cli import app

REPO = Path(__file__).resolve().parent.parent


def _compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_compose_declares_every_service_of_the_deployment():
    services = _compose()["services"]
    assert set(services) == {"postgres", "ledger", "superlink", "supernode-content", "supernode-group-buy",
                             "supernode-loyal", "coordinator"}  # fmt: skip
    data_volumes = {v for name, s in services.items() if name.startswith("supernode") for v in s["volumes"]
                    if v.startswith("data-")}  # fmt: skip
    assert len(data_volumes) == 3, "each partner keeps its own data volume"
    keys = {v.split(":")[0] for name, s in services.items() if name.startswith("supernode") for v in s["volumes"]
            if "/keys" in v}  # fmt: skip
    assert len(keys) == 3, "each partner mounts only its own keys"


def test_compose_commands_parse_with_the_real_clis():
    """Each cohort command must be accepted by the CLI's parser (typer), each Flower one by its --help'd flags."""
    from typer.main import get_command

    cli = get_command(app)
    for name, service in _compose()["services"].items():
        command = service.get("command")
        if command is None:
            continue
        argv = shlex.split(command)
        if argv[0] == "cohort":
            command, rest = cli, argv[1:]
            while hasattr(command, "commands") and rest and rest[0] in command.commands:
                command, rest = command.commands[rest[0]], rest[1:]
            assert command.name in ("serve", "train"), name
            command.make_context(command.name, rest)  # raises on an unknown or malformed option
        else:
            assert argv[0] in ("flower-superlink", "flower-supernode"), name
            helptext = subprocess.run([argv[0], "--help"], capture_output=True, text=True, timeout=60).stdout
            for flag in (a for a in argv[1:] if a.startswith("--")):
                assert flag in helptext, f"{name}: {flag} is not a {argv[0]} option"
    assert "--tls-cert" in _compose()["services"]["ledger"]["command"], "the ledger serves TLS in deployment"
