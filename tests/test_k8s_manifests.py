"""The Kubernetes manifests of server_config/k8s/: valid against the Kubernetes API schemas (offline,
strict: an unknown field is an error, and so is an apiVersion the schemas do not know), consistent
with each other and with the launcher and the CPU image, and, against a real server, the probes'
paths and the autoscaler's metric names exist.
"""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="needs PyYAML (comes with kubernetes-validate)")
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="needs kubernetes-validate: pip install "
                                          "'langcolor[scale]'")

ROOT = Path(__file__).resolve().parents[1] / "server_config"
K8S = ROOT / "k8s"
# The oldest Kubernetes release still in the providers' support windows, and the newest the
# validator ships schemas for.
VERSIONS = ("1.30.0", "1.37.0")


def documents(folder: Path = K8S) -> list[tuple[str, dict]]:
    found = []
    for path in sorted(folder.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                found.append((path.relative_to(folder).as_posix(), doc))
    return found


def validate(doc: dict, version: str) -> None:
    """kubernetes-validate, strict; a schema it cannot find is a failure too (its CLI only warns)."""
    kubernetes_validate.validate(doc, version, strict=True)


def by_kind(kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for _, doc in documents() if doc["kind"] == kind}


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_is_valid_for_kubernetes(version):
    docs = documents()
    assert {doc["kind"] for _, doc in docs} >= {"Deployment", "Service", "HorizontalPodAutoscaler",
                                                 "PodDisruptionBudget", "Secret", "ConfigMap"}
    errors = []
    for name, doc in docs:
        try:
            validate(doc, version)
        except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as e:
            errors.append(f"{name} ({doc.get('kind')}): {str(e).splitlines()[0]}")
    assert not errors, "\n".join(errors)


def test_the_validation_catches_what_it_should():
    """The check above would fail on the mistakes it is there for: a field from another API version,
    a wrong type, and an apiVersion that no longer exists."""
    hpa = by_kind("HorizontalPodAutoscaler")["langcolor-triton-cpu"]
    wrong_field = json.loads(json.dumps(hpa))
    wrong_field["spec"]["targetCPUUtilizationPercentage"] = 70  # autoscaling/v1's field, not v2's
    wrong_type = json.loads(json.dumps(hpa))
    wrong_type["spec"]["minReplicas"] = "two"
    pdb = json.loads(json.dumps(by_kind("PodDisruptionBudget")["langcolor-triton-cpu"]))
    pdb["apiVersion"] = "policy/v1beta1"  # removed in Kubernetes 1.25
    for doc, error in ((wrong_field, kubernetes_validate.ValidationError),
                       (wrong_type, kubernetes_validate.ValidationError),
                       (pdb, kubernetes_validate.SchemaNotFoundError)):
        with pytest.raises(error):
            validate(doc, VERSIONS[-1])


def _pod(deployment: dict) -> dict:
    return deployment["spec"]["template"]


def _container(deployment: dict) -> dict:
    (container,) = _pod(deployment)["spec"]["containers"]
    return container


def _selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_manifests_fit_together():
    deployments, services = by_kind("Deployment"), by_kind("Service")
    assert set(deployments) == {"langcolor-triton-cpu", "langcolor-triton-gpu"}
    service = services["langcolor-triton"]
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"http": 8000, "grpc": 8001, "metrics": 8002}
    for name, deployment in deployments.items():
        labels = _pod(deployment)["metadata"]["labels"]
        assert _selects(deployment["spec"]["selector"]["matchLabels"], labels), name
        assert _selects(service["spec"]["selector"], labels), f"the Service does not reach {name}"
        container = _container(deployment)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}, name
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, (name, port)
        probes = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
        assert probes["readinessProbe"] == {"path": "/v2/health/ready", "port": "http"}, name
        assert probes["startupProbe"] == {"path": "/v2/health/ready", "port": "http"}, name
        assert probes["livenessProbe"] == {"path": "/v2/health/live", "port": "http"}, name
        assert not any("httpHeaders" in p for p in probes.values()), "health must stay open: no key in a probe"
        resources = container["resources"]
        for part in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources[part]), (name, part)
        shm = [m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
        assert shm, f"{name}: the Python backend's stub needs a shared-memory volume"
        annotations = _pod(deployment)["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(ports["metrics"])
    gpu, cpu = deployments["langcolor-triton-gpu"], deployments["langcolor-triton-cpu"]
    assert _container(gpu)["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert _pod(gpu)["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    terms = _pod(cpu)["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"][0]["matchExpressions"] == [
        {"key": "nvidia.com/gpu.present", "operator": "DoesNotExist"}]  # the variants never share a node

    for hpa in by_kind("HorizontalPodAutoscaler").values():
        target = hpa["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment" and target["name"] in deployments
        assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    metrics = {m["type"] for hpa in by_kind("HorizontalPodAutoscaler").values() for m in hpa["spec"]["metrics"]}
    assert metrics == {"Resource", "Pods"}  # both ways of scaling: CPU use and the queue-time metric

    for name, pdb in by_kind("PodDisruptionBudget").items():
        matched = [d for d, dep in deployments.items() if _selects(pdb["spec"]["selector"]["matchLabels"],
                                                                  _pod(dep)["metadata"]["labels"])]
        assert matched == [name], (name, matched)  # one budget per Deployment
        assert pdb["spec"]["minAvailable"] == 1

    secret = by_kind("Secret")["langcolor-keys"]
    gpu_keys = {e["valueFrom"]["secretKeyRef"]["key"] for e in _container(gpu)["env"] if "valueFrom" in e}
    assert gpu_keys == {"api-key", "admin-key"} <= set(secret["stringData"])
    (keys_volume,) = [v for v in _pod(cpu)["spec"]["volumes"] if v["name"] == "keys"]
    assert keys_volume["secret"]["secretName"] == "langcolor-keys"
    assert keys_volume["secret"]["defaultMode"] == 0o400  # langcolor serve refuses a key file others can read


def test_gpu_deployment_starts_triton_as_the_launcher_does():
    from langcolor.client.connection import ApiKey
    from langcolor.server.launcher import ADMIN_APIS, USER_APIS, TritonServer, restricted_flags

    args = _container(by_kind("Deployment")["langcolor-triton-gpu"])["args"]
    launcher = TritonServer("/models").command(Path("/backends"), Path("tritonserver"))
    fixed = [a for a in launcher if a.split("=")[0] in (
        "--model-control-mode", "--load-model", "--exit-on-error", "--strict-readiness")]
    assert len(fixed) == 4 and set(fixed) <= set(args), (fixed, args)
    # The restricted-API groups exactly as the launcher writes them, the key from the Secret's env.
    placeholder = "K" * 32
    for apis, env in ((USER_APIS, "LANGCOLOR_API_KEY"), (ADMIN_APIS, "LANGCOLOR_ADMIN_KEY")):
        for flag in restricted_flags(apis, ApiKey(placeholder)):
            expected = flag.replace(placeholder, f"$({env})")
            assert expected in args, (expected, args)
    assert not any(a.startswith(("--http-restricted-api=health", "--grpc-restricted-protocol=health")) for a in args)


def test_cpu_image_and_deployment_run_langcolor_serve_with_flags_it_takes():
    import argparse

    from langcolor.server import serve

    dockerfile = (ROOT / "Dockerfile.cpu").read_text()
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", dockerfile, re.M).group(1))
    assert entrypoint[:2] == ["langcolor", "serve"]
    copied = re.search(r"^COPY model_repository (\S+)$", dockerfile, re.M).group(1)
    assert re.search(r"^EXPOSE 8000 8001 8002$", dockerfile, re.M)
    container = _container(by_kind("Deployment")["langcolor-triton-cpu"])
    parser = argparse.ArgumentParser(prog="langcolor serve")
    serve.add_arguments(parser)
    args = parser.parse_args(entrypoint[2:] + container["args"])  # exits (fails) on a flag it does not take
    assert str(args.model_repository) == copied and args.host == "0.0.0.0"
    mount = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}["keys"]
    assert str(args.api_key_file) == f"{mount}/api-key" and str(args.admin_key_file) == f"{mount}/admin-key"
    assert (args.http_port, args.grpc_port, args.metrics_port) == (8000, 8001, 8002)
    grace = by_kind("Deployment")["langcolor-triton-cpu"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > args.exit_timeout + 15  # the drain, then unloading, before the kubelet's SIGKILL


# --------------------------------------------------------------------------- against a real server


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=30) as response:  # no header of any kind
        return response.status, response.read().decode(errors="replace")


@pytest.mark.server
def test_probe_paths_and_autoscaler_metrics_exist_on_a_real_server(triton_server):
    from bad_inputs import photo_jpeg
    from langcolor.client.remote import RemoteStages

    e = triton_server.endpoints
    for deployment in by_kind("Deployment").values():
        container = _container(deployment)
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            status, _ = _get(f"http://{e.http_url}{container[kind]['httpGet']['path']}")
            assert status == 200, kind
    with RemoteStages(f"http://{e.http_url}", endpoint=True) as remote:  # one request, so the counters move
        remote.colorize_bytes(photo_jpeg(), "a red circle")
    _, metrics = _get(e.metrics_url)
    rules = yaml.safe_load(by_kind("ConfigMap")["langcolor-prometheus-adapter-rules"]["data"]["config.yaml"])
    for rule in rules["rules"]:
        names = set(re.findall(r"\b(nv_[a-z_]+)\{", rule["seriesQuery"] + rule["metricsQuery"]))
        assert names, rule
        for name in names:
            values = [float(v) for v in re.findall(rf"^{name}\{{[^}}]*\}} ([0-9.e+]+)$", metrics, re.M)]
            assert values and sum(values) > 0, f"{name} is not on the server's /metrics (or never moved)"
