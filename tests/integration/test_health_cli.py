"""`mosaic gateway health SERVICE`: the container health check, against real services.

Exit 0 only when the service answers SERVING over internal mTLS (operator identity) or,
for the gateway, over its admin listener; NOT_SERVING and no answer are exit 1.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mosaic.config import SERVICES, load_config
from tests.support.instances import MOSAIC, Instance, cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Instance]:
    inst = Instance(tmp_path_factory.mktemp("health"), "b")
    inst.start()
    yield inst
    inst.stop()


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_every_running_service_is_serving(instance: Instance, service: str) -> None:
    code, doc, err = instance.cli("gateway", "health", service)
    assert code == 0, (doc, err)
    assert doc["service"] == service
    assert doc["status"] == "SERVING"
    assert doc["serving"] is True
    assert doc["latency_ms"] > 0


def test_human_output_names_the_status(instance: Instance) -> None:
    code, out, _ = instance.cli("gateway", "health", "grants-service", json_out=False)
    assert code == 0
    assert out.startswith("grants-service SERVING")


def test_unknown_service_is_bad_usage(instance: Instance) -> None:
    code, doc, _ = instance.cli("gateway", "health", "no-such-service")
    assert code == 2
    assert doc["error"]["code"] == "USAGE"


def test_stopped_instance_is_unhealthy(tmp_path: Path) -> None:
    inst = Instance(tmp_path, "down")  # initialised, never started
    for service in ("ca-service", "federation-gateway"):
        code, doc, _ = inst.cli("gateway", "health", service, "--timeout", "1")
        assert code == 1, doc
        assert doc["error"]["code"] in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
        assert "mosaic serve" in doc["error"]["remediation"]


def test_service_without_its_dependency_is_not_serving(tmp_path: Path) -> None:
    """grants-service runs but ca-service does not: it answers, and answers NOT_SERVING."""
    inst = Instance(tmp_path, "half")
    log = (tmp_path / "grants.log").open("wb")
    proc = subprocess.Popen(
        [*MOSAIC, "--home", str(inst.home), "serve", "grants-service"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        doc: dict[str, object] = {}
        while time.monotonic() < deadline:
            code, doc, _ = inst.cli("gateway", "health", "grants-service", "--timeout", "1")
            if "status" in doc:
                break
            time.sleep(0.3)
        assert doc.get("status") == "NOT_SERVING", doc
        assert doc["serving"] is False
        assert code == 1
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()


@pytest.mark.parametrize(
    ("command", "missing"),
    [
        (("gateway", "doctor"), "admin_token"),
        (("gateway", "health", "federation-gateway"), "admin_token"),
        (("gateway", "doctor"), "operator_key"),
        (("gateway", "health", "grants-service"), "operator_key"),
    ],
)
@pytest.mark.parametrize("json_out", [True, False])
def test_an_unreadable_home_file_is_a_config_error_not_a_traceback(
    tmp_path: Path, command: tuple[str, ...], missing: str, json_out: bool
) -> None:
    inst = Instance(tmp_path, "cf")
    config = load_config(inst.home)
    path = (
        config.admin_token_file
        if missing == "admin_token"
        else config.internal_pki_dir / "operator.key"
    )
    path.unlink()
    code, out, err = inst.cli(*command, json_out=json_out)
    assert code == 1, (out, err)
    assert "Traceback" not in err
    if json_out:
        assert out["error"]["code"] == "CONFIG"
        assert str(path) in out["error"]["message"]
        assert out["error"]["remediation"]
    else:
        assert f"error CONFIG: cannot read {path}" in err


def test_init_refuses_a_valkey_url_the_gateway_could_not_use(tmp_path: Path) -> None:
    code, doc, err = cli(tmp_path / "h", "init", "--name", "vk", "--valkey", "http://foo")
    assert code == 1, (doc, err)
    assert doc["error"]["code"] == "CONFIG" and "redis://" in doc["error"]["remediation"]
    assert not (tmp_path / "h" / "instance.toml").exists()
