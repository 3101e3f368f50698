"""The Kubernetes manifests under deploy/kubernetes/, checked offline: yamllint, every object against
the Kubernetes OpenAPI schemas bundled in kubernetes-validate (strict: unknown fields are errors)
with the network made unreachable, and what the manifests promise each other and Veil (probes
on /healthz and /readyz, the Secret's keys, selectors, a config Veil accepts, a policy that loads,
the balancer's affinity rules equal to the config the scale-out test runs)."""

from __future__ import annotations

import copy
import re
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from yamllint import linter
from yamllint.config import YamlLintConfig

from veil.config import LimitsConfig, parse_config
from veil.policies import load_policy

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSIONS = ["1.30.0", "1.33.0"]
SECRET_KEYS = {"VEIL_DATABASE_URL", "VEIL_MASTER_KEY", "VEIL_AUDIT_SIGNING_KEY"}


def documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def kubernetes_objects() -> list[tuple[str, dict[str, Any]]]:
    return [(name, doc) for name, doc in documents() if doc["kind"] != "Kustomization"]


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for _, d in kubernetes_objects() if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection fails the test: the validation must be offline."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"network access attempted during offline validation: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.mark.req("deploy:manifests")
def test_yamllint_passes_on_everything_under_deploy() -> None:
    config = YamlLintConfig(file=str(ROOT / "deploy" / ".yamllint.yaml"))
    problems = []
    for path in sorted((ROOT / "deploy").rglob("*.yaml")):
        problems += [f"{path.relative_to(ROOT)}:{p.line}: {p.desc}" for p in linter.run(path.read_text(), config)]
    assert problems == []


@pytest.mark.req("deploy:manifests")
def test_every_object_is_valid_against_the_bundled_kubernetes_schemas(no_network: None) -> None:
    objects = kubernetes_objects()
    kinds = {d["kind"] for _, d in objects}
    expected = {"Namespace", "ConfigMap", "Secret", "Deployment", "Service"}
    expected |= {"PodDisruptionBudget", "HorizontalPodAutoscaler", "Job"}
    assert kinds == expected
    for version in KUBERNETES_VERSIONS:
        for _, doc in objects:
            kubernetes_validate.validate(doc, version, strict=True)  # raises on any schema error
    # The validator is not vacuous: a misspelt field and a wrong type are refused, offline too.
    typo = copy.deepcopy(one("Deployment", "veil"))
    typo["spec"]["replica"] = typo["spec"].pop("replicas")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, KUBERNETES_VERSIONS[-1], strict=True)
    wrong = copy.deepcopy(one("Deployment", "veil"))
    wrong["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["periodSeconds"] = "often"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong, KUBERNETES_VERSIONS[-1], strict=True)


@pytest.mark.req("deploy:manifests")
def test_the_gateway_deployment_probes_secrets_and_disruption_rules_fit_together() -> None:
    deployment = one("Deployment", "veil")
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (container,) = pod["spec"]["containers"]
    port = container["ports"][0]["containerPort"]
    assert container["args"][:2] == ["serve", "--config"] and container["args"][-1] == f"0.0.0.0:{port}"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert "securityContext" in container
    # SIGTERM comes after preStop; Veil then finishes calls for shutdown_grace_s and closes (docs/deployment.md).
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    assert grace >= pre_stop + LimitsConfig().shutdown_grace_s + 10

    # Secrets come from the Secret, as environment variables; the template holds no real secret.
    runtime = one("Secret", "veil-runtime")
    assert [ref["secretRef"]["name"] for ref in container["envFrom"]] == ["veil-runtime"]
    assert set(runtime["stringData"]) == SECRET_KEYS
    assert all("CHANGE-ME" in value for value in runtime["stringData"].values())
    assert "VEIL_MIGRATION_DATABASE_URL" in one("Secret", "veil-migrate")["stringData"]

    # PDB, HPA and the headless Service all select exactly these pods.
    pdb = one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"].get("maxUnavailable", 0) < deployment["spec"]["replicas"]
    hpa = one("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "veil"}
    assert hpa["spec"]["minReplicas"] >= 2
    replicas_service = one("Service", "veil-replicas")
    assert replicas_service["spec"]["selector"].items() <= labels.items()
    assert replicas_service["spec"]["clusterIP"] == "None"

    # Every object sits in the namespace, and the kustomization lists every file but the template.
    assert {d["metadata"].get("namespace", "veil") for _, d in kubernetes_objects()} == {"veil"}
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}


@pytest.mark.req("deploy:manifests")
def test_the_configmap_holds_a_config_veil_accepts_and_a_policy_that_loads(tmp_path: Path) -> None:
    deployment = one("Deployment", "veil")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    configmap = one("ConfigMap", "veil-config")
    config_dir = tmp_path / "etc-veil"
    config_dir.mkdir()
    for key, text in configmap["data"].items():
        (config_dir / key).write_text(text)
    raw = yaml.safe_load(configmap["data"]["veil.yaml"])
    assert "database_url" not in raw, "the database URL (with its password) belongs in the Secret"
    config_path = container["args"][2]
    assert Path(config_path).parent == Path(mounts["config"])
    assert Path(raw["policy"]).parent == Path(mounts["config"]) and Path(raw["policy"]).name in configmap["data"]
    assert raw["data_dir"] == mounts["data"]
    assert not raw["data_dir"].startswith("/var/"), "firejail cannot mount a workspace under /var"
    config = parse_config({**raw, "policy": str(config_dir / "policy.yaml")}, source=config_dir / "veil.yaml")
    assert config.token_scope == "principal"  # tokens agree on every replica (docs/deployment.md)
    # Metrics on their own port, the one the pod declares and Prometheus is told to scrape.
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert config.observability.metrics.listen == f"0.0.0.0:{ports['metrics']}"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(ports["metrics"])
    policy = load_policy(config.policy)
    assert policy.tokens.scope == "principal"


@pytest.mark.req("deploy:manifests")
def test_the_migration_job_runs_non_root_with_the_owner_secret_only() -> None:
    job = one("Job", "veil-migrate")
    spec = job["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
    (container,) = spec["containers"]
    assert container["args"][:2] == ["db", "upgrade"]
    assert [ref["secretRef"]["name"] for ref in container["envFrom"]] == ["veil-migrate"]
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


def backend_rules(cfg: str) -> list[str]:
    """The directives of ``backend veil`` except where its servers are."""
    section = re.split(r"(?m)^\s*backend veil\s*$", cfg, maxsplit=1)[1]
    lines = [re.sub(r"\s+#.*$", "", line).strip() for line in section.splitlines()]
    return [line for line in lines if line and not line.startswith(("#", "server ", "server-template "))]


@pytest.mark.req("deploy:manifests")
def test_the_cluster_balancer_routes_like_the_tested_haproxy_config(tmp_path: Path) -> None:
    shipped = (ROOT / "deploy" / "haproxy" / "haproxy.cfg").read_text()
    in_cluster = one("ConfigMap", "veil-haproxy")["data"]["haproxy.cfg"]
    assert backend_rules(in_cluster) == backend_rules(shipped)
    assert "stick match req.hdr(mcp-session-id)" in backend_rules(shipped)
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(haproxy).exists():
        pytest.fail("haproxy is not installed: apt-get install haproxy (.ci/run installs it)")
    for name, text in (("shipped.cfg", shipped), ("cluster.cfg", in_cluster)):
        (tmp_path / name).write_text(text)
        checked = subprocess.run([haproxy, "-c", "-f", str(tmp_path / name)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stderr
