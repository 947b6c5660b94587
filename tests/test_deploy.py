"""deploy/: the Kubernetes manifests validate against the Kubernetes schemas and agree with the
server (port, health path, graceful timeout, the metric the autoscaler reads)."""

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from monovl.server.metrics import Metrics
from monovl.server.serve import HEALTH_PATH
from monovl.server.state import DEFAULT_PORT

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"


def documents() -> list[dict]:
    return [doc for path in sorted(DEPLOY.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def by_kind(kind: str) -> dict:
    (found,) = [doc for doc in documents() if doc["kind"] == kind]
    return found


@pytest.mark.parametrize("doc", documents(), ids=lambda doc: f"{doc['kind']}/{doc['metadata']['name']}")
def test_each_manifest_validates_against_the_kubernetes_schemas(doc):
    kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_the_deployment_asks_for_a_gpu_and_probes_health_with_room_for_a_model_load():
    pod = by_kind("Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["ports"][0]["containerPort"] == DEFAULT_PORT
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == HEALTH_PATH
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 15 * 60  # a 2B download and load
    graceful = float(next(e["value"] for e in container["env"] if e["name"] == "MONOVL_GRACEFUL_TIMEOUT"))
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and float(command[1]) >= 5  # endpoint removal takes seconds to propagate
    assert pod["terminationGracePeriodSeconds"] > float(command[1]) + graceful


def test_the_pod_runs_hardened_with_its_writable_paths_on_volumes():
    pod = by_kind("Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert (
        pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    )
    hardened = container["securityContext"]
    assert hardened["readOnlyRootFilesystem"] and not hardened["allowPrivilegeEscalation"]
    assert hardened["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert set(mounts) == {"/models", "/tmp"}  # the image's HF_HOME and MONOVL_CACHE are under /models
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TRITON_CACHE_DIR"].startswith("/tmp/") and env["XDG_CACHE_HOME"].startswith("/tmp/")
    # A per-pod model cache: replicas on any node (a ReadWriteOnce claim would pin them to one).
    assert "emptyDir" in volumes[mounts["/models"]]
    assert not [doc for doc in documents() if doc["kind"] == "PersistentVolumeClaim"]


def test_the_service_and_the_autoscaler_point_at_the_deployment_and_a_metric_the_server_exports():
    deployment, service, autoscaler = by_kind("Deployment"), by_kind("Service"), by_kind("HorizontalPodAutoscaler")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert autoscaler["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    rules = yaml.safe_load(by_kind("ConfigMap")["data"]["config.yaml"])["rules"]
    exported = Metrics("m").render().decode()
    for rule in rules:
        assert f"# TYPE {rule['name']['matches']} " in exported
    metric = autoscaler["spec"]["metrics"][0]["pods"]["metric"]["name"]
    assert metric in {rule["name"]["as"] for rule in rules}
