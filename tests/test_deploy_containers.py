"""deploy/compose/compose.yaml against the Compose specification's JSON schema, and what can be checked
of deploy/docker/Dockerfile without building it (no image can be pulled on these machines).

The schema is the Compose specification's ``compose_spec.json`` as shipped inside PyPI's docker-compose
1.29.2 wheel (Apache-2.0), fetched by pip when the tests run: nothing from it is kept in the repository."""
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "deploy" / "compose" / "compose.yaml"
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
SCHEMA_WHEEL = "docker-compose==1.29.2"  # its compose/config/compose_spec.json is the Compose specification


@pytest.fixture(scope="module")
def schema(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("compose-spec")
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(d), SCHEMA_WHEEL],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = d.glob("docker_compose-*.whl")
    return json.loads(zipfile.ZipFile(wheel).read("compose/config/compose_spec.json"))


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_file_is_valid_against_the_compose_specification(schema):
    jsonschema.Draft7Validator(schema).validate(_compose())  # the schema declares draft-07


def test_the_schema_check_catches_a_broken_file(schema):
    broken = _compose()
    broken["services"]["ingest"]["restart_policy"] = "always"  # not a service key
    errors = list(jsonschema.Draft7Validator(schema).iter_errors(broken))
    assert errors and "restart_policy" in str(errors[0].message)


def test_compose_services_images_health_restart_and_secrets():
    c = _compose()
    s = c["services"]
    assert s["db"]["image"].startswith("timescale/timescaledb:")  # Community edition: compression
    assert s["mqtt"]["image"] == "eclipse-mosquitto:2"
    assert s["grafana"]["image"].startswith("grafana/grafana-oss:")
    assert s["nats"]["profiles"] == ["cluster"]
    wulian = {n: v for n, v in s.items() if v.get("image") == "wulian:latest" and n not in ("migrate", "broker-init")}
    assert set(wulian) == {"ingest", "api", "derive", "gateway-hj212", "gateway-jt808", "notify", "forward-hj212"}
    for name, svc in s.items():
        if name in ("migrate", "broker-init"):
            continue
        assert "healthcheck" in svc and svc["restart"] == "unless-stopped", name
    for svc in wulian.values():
        assert svc["env_file"] == ["wulian.env"] and "/readyz" in " ".join(svc["healthcheck"]["test"])
    # no secret in the compose file itself: they come from the env file
    assert not re.search(r"(?i)password\s*[:=]\s*\S", COMPOSE.read_text())
    conf = (COMPOSE.parent / "mosquitto" / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and "mosquitto_dynamic_security.so" in conf
    for svc in s.values():  # bind mounts point at files of the checkout
        for v in svc.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith("."):
                assert (COMPOSE.parent / src).exists(), src


def test_dockerfile_stages_are_named_and_every_copy_source_exists():
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", text, re.M)
    assert stages == ["build", "runtime"] and len(re.findall(r"^FROM\s", text, re.M)) == 2
    for line in re.findall(r"^COPY\s+(.*)$", text, re.M):
        args = line.split()
        if args[0].startswith("--from="):
            assert args[0].split("=", 1)[1] in stages
            continue
        for src in args[:-1]:
            assert (ROOT / src).exists(), f"COPY source {src} missing"
    runtime = text.split("AS runtime", 1)[1]
    assert re.search(r"^USER\s+wulian$", runtime, re.M)  # non-root
    assert "NUMBA_CACHE_DIR" in runtime and "warmup" in runtime  # kernels compiled at build
    copied = {a.split()[0] for a in re.findall(r"^COPY\s+(\w+)\s+\w+$", text, re.M)}
    assert {"wulian", "core", "ingest", "api", "simulators", "dashboards"} <= copied  # every package folder
