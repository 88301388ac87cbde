"""The checked-in generated code is exactly what protos/generate.py makes from protos/ledger.proto."""

from pathlib import Path

from protos.generate import GENERATED, REPO_ROOT, generate


def test_generated_code_is_fresh(tmp_path):
    fresh = generate(tmp_path)
    stale = [name for name, path in zip(GENERATED, fresh) if path.read_bytes() != (REPO_ROOT / name).read_bytes()]
    assert not stale, f"{stale} differ from protos/ledger.proto: run `python -m protos.generate` and commit"


def test_generated_grpc_module_imports_as_part_of_the_package():
    text = (REPO_ROOT / "protos" / "ledger_pb2_grpc.py").read_text()
    assert "from protos import ledger_pb2" in text
    from protos import ledger_pb2, ledger_pb2_grpc

    service = ledger_pb2.DESCRIPTOR.services_by_name["ConsentLedger"]
    assert service.full_name == "cohort.ledger.v1.ConsentLedger"
    assert hasattr(ledger_pb2_grpc, "ConsentLedgerStub")
    assert Path(ledger_pb2.__file__).parent == REPO_ROOT / "protos"
