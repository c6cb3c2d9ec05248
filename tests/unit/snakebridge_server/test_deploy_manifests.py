"""deploy/: the Kubernetes manifests parse, and what they rely on agrees with the server's
own settings (socket path, token file, probe services, metrics port, drain and grace
period, config keys). No cluster here: the YAML is read, not applied."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from snakebridge_server.cli import build_config
from snakebridge_server.config import ServerConfig, parse_listen

yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (the test extra has it)")

DEPLOY = Path(__file__).parents[3] / "deploy"
OVERLAYS = ["base", "overlays/tcp", "overlays/ray"]
POOL_HEALTH = re.compile(r"^snakebridge\.pool\.([A-Za-z0-9_-]+)$")


def load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def config_of(kustomization: Path) -> tuple[ServerConfig, Path]:
    """The server config the kustomization ships (parsed as bridge-server would)."""
    toml = kustomization.parent / "bridge-server.toml"
    return build_config(["--config", str(toml)], environ={}), toml


def merged_containers(overlay: str) -> dict[str, dict[str, Any]]:
    """The pod's containers, with the overlay's patch applied the way kustomize's
    strategic merge does it for the fields we use (a null deletes a field)."""
    (base,) = load_all(DEPLOY / "base" / "deployment.yaml")
    containers = {c["name"]: c for c in base["spec"]["template"]["spec"]["containers"]}
    probes = DEPLOY / overlay / "probes.yaml"
    if overlay != "base" and probes.exists():
        (patch,) = load_all(probes)
        for c in patch["spec"]["template"]["spec"]["containers"]:
            target = containers[c["name"]]
            for key, value in c.items():
                if isinstance(value, dict) and isinstance(target.get(key), dict):
                    merged = {**target[key], **value}
                    target[key] = {k: v for k, v in merged.items() if v is not None}
                elif key == "env":
                    env = {e["name"]: e for e in target.get("env", [])}
                    env.update({e["name"]: e for e in value})
                    target["env"] = list(env.values())
                else:
                    target[key] = value
    return containers


def test_every_manifest_parses_and_names_its_kind() -> None:
    files = sorted(DEPLOY.rglob("*.yaml"))
    assert len(files) == 7, files
    for path in files:
        for doc in load_all(path):
            assert "apiVersion" in doc and "kind" in doc, path


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_shipped_config_is_valid_for_this_server(overlay: str) -> None:
    config, _ = config_of(DEPLOY / overlay / "kustomization.yaml")
    assert config.token_file == "/etc/snakebridge/token/token"
    assert config.metrics and parse_listen(config.metrics)[1] == 9464
    assert all(p.min_sandbox == "standard" for p in config.pools)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_sidecar_app_socket_token_probes_and_grace_agree_with_the_config(overlay: str) -> None:
    config, _ = config_of(DEPLOY / overlay / "kustomization.yaml")
    (deployment,) = load_all(DEPLOY / "base" / "deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    containers = merged_containers(overlay)
    app, sidecar = containers["app"], containers["bridge-server"]
    mounts = {m["name"]: m["mountPath"] for m in sidecar["volumeMounts"]}
    app_mounts = {m["name"]: m["mountPath"] for m in app["volumeMounts"]}
    app_env = {e["name"]: e["value"] for e in app["env"]}

    # The address the app dials is where the server listens.
    if config.uds:
        assert app_env["SNAKEBRIDGE_ADDRESS"] == f"unix://{config.uds}"
        sock_dir = str(Path(config.uds).parent)
        assert mounts["bridge-socket"] == app_mounts["bridge-socket"] == sock_dir
        volume = next(v for v in pod["volumes"] if v["name"] == "bridge-socket")
        assert "emptyDir" in volume
        # The socket is 0600: the app must run as the server's uid.
        assert pod["securityContext"]["runAsUser"] and "runAsUser" not in app.get(
            "securityContext", {}
        )
    else:
        assert app_env["SNAKEBRIDGE_ADDRESS"] == f"127.0.0.1:{config.port}"
        assert config.port in [p["containerPort"] for p in sidecar["ports"]]

    # The token file is the mounted Secret's key.
    assert config.token_file is not None
    token_dir, key = config.token_file.rsplit("/", 1)
    assert mounts["bridge-token"] == app_mounts["bridge-token"] == token_dir
    secret = next(v for v in pod["volumes"] if v["name"] == "bridge-token")["secret"]
    kustomization = yaml.safe_load((DEPLOY / "base" / "kustomization.yaml").read_text())
    generated = next(
        g for g in kustomization["secretGenerator"] if g["name"] == secret["secretName"]
    )
    assert any(lit.startswith(f"{key}=") for lit in generated["literals"])

    # Probes ask grpc.health.v1 for the server ("") or a pool that exists.
    pools = {p.name for p in config.pools}
    services = {}
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        probe = sidecar[kind]
        if "grpc" in probe:
            assert not config.uds, f"{kind}: kubelet's gRPC probe cannot dial a unix socket"
            assert probe["grpc"]["port"] == config.port
            service = probe["grpc"]["service"]
        else:
            argv = probe["exec"]["command"]
            assert argv[0] == "grpc_health_probe"
            assert f"-addr=unix://{config.uds}" in argv
            service = next(a for a in argv if a.startswith("-service=")).split("=", 1)[1]
        match = POOL_HEALTH.match(service)
        assert service == "" or (match and match.group(1) in pools), (kind, service)
        services[kind] = service
    # Liveness asks for the server: a tripped pool must not get the pod restarted.
    assert services["livenessProbe"] == ""
    assert services["readinessProbe"] == f"snakebridge.pool.{config.pool}"

    # SIGTERM drains for drain_grace, then workers get 5 s to exit: within the grace.
    assert pod["terminationGracePeriodSeconds"] > config.drain_grace + 5
    # Metrics are scraped where they are served.
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert config.metrics
    assert int(annotations["prometheus.io/port"]) == parse_listen(config.metrics)[1]
    assert parse_listen(config.metrics)[1] in [p["containerPort"] for p in sidecar["ports"]]


def test_the_sidecar_runs_as_non_root_without_privileges() -> None:
    (deployment,) = load_all(DEPLOY / "base" / "deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    sidecar = merged_containers("base")["bridge-server"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert sidecar["securityContext"]["allowPrivilegeEscalation"] is False
    assert sidecar["securityContext"]["capabilities"]["drop"] == ["ALL"]
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^USER 10001", dockerfile, re.M)
    assert pod["securityContext"]["runAsUser"] == 10001


def test_the_ray_overlay_joins_the_kuberay_head_service_it_creates() -> None:
    config, _ = config_of(DEPLOY / "overlays/ray/kustomization.yaml")
    (cluster,) = load_all(DEPLOY / "overlays/ray/raycluster.yaml")
    assert cluster["kind"] == "RayCluster"
    head = f"{cluster['metadata']['name']}-head-svc"  # KubeRay's naming
    client_port = next(
        p["containerPort"]
        for p in cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]
        if p["name"] == "client"
    )
    assert config.ray_address == f"ray://{head}:{client_port}"
    ray_pools = [p for p in config.pools if p.backend == "ray"]
    assert ray_pools and all(p.num_gpus >= 1 for p in ray_pools)
    gpu_group = cluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" in gpu_group["resources"]["limits"]
