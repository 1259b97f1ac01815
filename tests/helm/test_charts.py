"""The Helm charts: lint every chart, render the umbrella chart in its main configurations, check
what the rendered objects promise (kinds, native gRPC probes on the right ports, the gateway wired
to the other Services, no architecture pinning, non-root pods) and validate them against the
Kubernetes schemas. The RayService custom resource has no schema here: its pod templates are
validated as PodTemplates and its Serve config against Ray Serve's own schema.

helm comes from .venv/bin/helm (scripts/install_helm.sh, run by make install) or from PATH.
"""

from __future__ import annotations

import base64
import importlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic import TypeAdapter, ValidationError

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
SERVICE_CHARTS = ("embedder", "retriever", "generator", "gateway")
CHARTS = ("ragfleet-common", *SERVICE_CHARTS, "ragfleet")
RELEASE = "rag"
GRPC_PORTS = {"gateway": 50050, "embedder": 50051, "retriever": 50052, "generator": 50053}
# A chart needs the fleet's service credential and the gateway its API keys; the umbrella chart
# creates the credential, and a service chart installed on its own is given an existing Secret.
API_KEYS_SECRET = "ragfleet-api-keys"
CHART_VALUES = {
    "ragfleet": (f"gateway.auth.apiKeysSecret.name={API_KEYS_SECRET}",),
    "gateway": (
        f"auth.apiKeysSecret.name={API_KEYS_SECRET}",
        "global.serviceCredential.existingSecret=fleet-credential",
    ),
    **{
        c: ("global.serviceCredential.existingSecret=fleet-credential",) for c in SERVICE_CHARTS[:3]
    },
}
CREDENTIAL_DIR = "/etc/ragfleet/service-credential"
# The oldest Kubernetes the charts target (native gRPC probes are GA since 1.27) and the newest
# schema kubernetes-validate ships.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())

Manifest = dict[str, Any]
Render = Callable[..., list[Manifest]]
Refusal = Callable[..., str]


def _helm_binary() -> str:
    local = REPO / ".venv" / "bin" / "helm"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    on_path = shutil.which("helm")
    if on_path is None:
        pytest.fail(
            "helm is neither at .venv/bin/helm nor on PATH: run scripts/install_helm.sh "
            "(make install runs it)"
        )
    return on_path


@pytest.fixture(scope="module")
def helm(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Runs helm with its config, cache and data kept in a temporary folder."""
    binary = _helm_binary()
    home = tmp_path_factory.mktemp("helm-home")
    env = {
        **os.environ,
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_DATA_HOME": str(home / "data"),
    }

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [binary, *args], env=env, capture_output=True, text=True, timeout=120
        )
        if check and result.returncode != 0:
            pytest.fail(f"helm {' '.join(args)} failed:\n{result.stderr}")
        return result

    return run


@pytest.fixture(scope="module")
def charts(
    helm: Callable[..., subprocess.CompletedProcess[str]], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A copy of helm/ with every chart's file:// dependencies built (the tree stays clean)."""
    root = tmp_path_factory.mktemp("charts") / "helm"
    shutil.copytree(REPO / "helm", root, ignore=shutil.ignore_patterns("charts", "Chart.lock"))
    # Service charts first: the umbrella packages them together with their built dependencies.
    for chart in (*SERVICE_CHARTS, "ragfleet"):
        helm("dependency", "build", str(root / chart))
    return root


@pytest.fixture(scope="module")
def render(helm: Callable[..., subprocess.CompletedProcess[str]], charts: Path) -> Render:
    def run(*set_values: str, chart: str = "ragfleet") -> list[Manifest]:
        args = ["template", RELEASE, str(charts / chart), "--namespace", "ragfleet"]
        for value in (*CHART_VALUES[chart], *set_values):
            args += ["--set", value]
        documents = yaml.safe_load_all(helm(*args).stdout)
        return [doc for doc in documents if doc]

    return run


@pytest.fixture(scope="module")
def refusal(helm: Callable[..., subprocess.CompletedProcess[str]], charts: Path) -> Refusal:
    """helm template's error message for values that a chart must refuse to render; unlike
    render, the chart's usual values (CHART_VALUES) are left out."""

    def run(*set_values: str, chart: str = "ragfleet") -> str:
        args = ["template", RELEASE, str(charts / chart)]
        args += [arg for value in set_values for arg in ("--set", value)]
        result = helm(*args, check=False)
        assert result.returncode != 0, f"helm template {chart} {set_values} rendered"
        return result.stderr

    return run


@pytest.fixture(scope="module")
def default_objects(render: Render) -> list[Manifest]:
    return render()


@pytest.fixture(scope="module")
def production_objects(render: Render) -> list[Manifest]:
    return render(
        "generator.gpu.enabled=true",
        "generator.gpu.hfToken.existingSecret=hf-token",
        "retriever.backend=opensearch",
        "retriever.opensearch.url=https://opensearch-cluster-master:9200",
        "retriever.opensearch.auth.existingSecret=opensearch-credentials",
        "retriever.replicaCount=3",
        "gateway.ingress.enabled=true",
        "global.image.registry=registry.example.com/acme",
        "global.image.tag=1.2.3",
    )


def find(objects: list[Manifest], kind: str, name: str) -> Manifest:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def workloads(objects: list[Manifest]) -> list[Manifest]:
    return [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")]


def ray_pod_templates(rayservice: Manifest) -> Iterator[Manifest]:
    cluster = rayservice["spec"]["rayClusterConfig"]
    yield cluster["headGroupSpec"]["template"]
    for group in cluster.get("workerGroupSpecs", []):
        yield group["template"]


def pods_by_service(objects: list[Manifest]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(service, pod spec) of every workload and of every Ray node of the generator."""
    for workload in workloads(objects):
        yield (
            workload["metadata"]["name"].removeprefix(f"{RELEASE}-"),
            workload["spec"]["template"]["spec"],
        )
    for rayservice in (o for o in objects if o["kind"] == "RayService"):
        for template in ray_pod_templates(rayservice):
            yield "generator", template["spec"]


def all_pod_specs(objects: list[Manifest]) -> Iterator[dict[str, Any]]:
    for _, spec in pods_by_service(objects):
        yield spec


def config_env(objects: list[Manifest], service: str) -> dict[str, str]:
    data: dict[str, str] = find(objects, "ConfigMap", f"{RELEASE}-{service}")["data"]
    return data


def serve_config(objects: list[Manifest]) -> dict[str, Any]:
    rayservice = find(objects, "RayService", f"{RELEASE}-generator")
    config: dict[str, Any] = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    return config


@pytest.mark.parametrize("chart", CHARTS)
def test_chart_lints_clean(
    helm: Callable[..., subprocess.CompletedProcess[str]], charts: Path, chart: str
) -> None:
    values = [arg for value in CHART_VALUES.get(chart, ()) for arg in ("--set", value)]
    result = helm("lint", "--strict", str(charts / chart), *values)
    assert "0 chart(s) failed" in result.stdout


def test_default_release_renders_every_service(default_objects: list[Manifest]) -> None:
    kinds = {(o["kind"], o["metadata"]["name"]) for o in default_objects}
    expected = {
        ("Deployment", f"{RELEASE}-embedder"),
        ("StatefulSet", f"{RELEASE}-retriever"),
        ("Deployment", f"{RELEASE}-gateway"),
        ("RayService", f"{RELEASE}-generator"),
        *{("Service", f"{RELEASE}-{s}") for s in SERVICE_CHARTS},
        *{("ConfigMap", f"{RELEASE}-{s}") for s in ("embedder", "retriever", "gateway")},
        *{("PodDisruptionBudget", f"{RELEASE}-{s}") for s in ("embedder", "retriever", "gateway")},
        *{("ServiceAccount", f"{RELEASE}-{s}") for s in ("embedder", "retriever", "gateway")},
    }
    assert expected <= kinds
    assert not {k for k, _ in kinds} & {"HorizontalPodAutoscaler", "Ingress"}


@pytest.mark.parametrize("service", ["embedder", "retriever", "gateway"])
def test_probes_are_native_grpc_on_the_service_port(
    default_objects: list[Manifest], service: str
) -> None:
    port = GRPC_PORTS[service]
    (workload,) = [
        w for w in workloads(default_objects) if w["metadata"]["name"] == f"{RELEASE}-{service}"
    ]
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    assert {"name": "grpc", "containerPort": port, "protocol": "TCP"} in container["ports"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": port}, probe
    assert config_env(default_objects, service)[f"RAGFLEET_{service.upper()}_PORT"] == str(port)
    assert config_env(default_objects, service)[f"RAGFLEET_{service.upper()}_HOST"] == "0.0.0.0"


def test_services_expose_the_grpc_ports(default_objects: list[Manifest]) -> None:
    for service, port in GRPC_PORTS.items():
        ports = find(default_objects, "Service", f"{RELEASE}-{service}")["spec"]["ports"]
        assert {"name": "grpc", "port": port, "targetPort": port}.items() <= ports[0].items()
    gateway_ports = find(default_objects, "Service", f"{RELEASE}-gateway")["spec"]["ports"]
    assert [p["port"] for p in gateway_ports] == [50050, 8080, 9090]


def test_gateway_points_at_the_other_services(default_objects: list[Manifest]) -> None:
    env = config_env(default_objects, "gateway")
    for upstream in ("embedder", "retriever", "generator"):
        host, port = env[f"RAGFLEET_GATEWAY_{upstream.upper()}_ADDRESS"].split(":")
        service = find(default_objects, "Service", host)
        assert int(port) in [p["port"] for p in service["spec"]["ports"]]
        assert host == f"{RELEASE}-{upstream}"
    assert env["RAGFLEET_GATEWAY_REST_PORT"] == "8080"
    assert (
        env["RAGFLEET_GATEWAY_GENERATOR_APPLICATION"]
        == serve_config(default_objects)["applications"][0]["name"]
    )


def test_generator_service_reaches_the_serve_grpc_proxy(default_objects: list[Manifest]) -> None:
    service = find(default_objects, "Service", f"{RELEASE}-generator")
    assert service["spec"]["selector"]["ray.io/serve"] == "true"
    for template in ray_pod_templates(find(default_objects, "RayService", f"{RELEASE}-generator")):
        labels = template["metadata"]["labels"]
        selector = {k: v for k, v in service["spec"]["selector"].items() if k != "ray.io/serve"}
        assert selector.items() <= labels.items()
        ports = {p["name"]: p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}
        assert ports["grpc"] == 50053
        # KubeRay checks Serve's HTTP proxy health on the port named "serve".
        assert ports["serve"] == serve_config(default_objects)["http_options"]["port"]


def test_serve_config_deploys_the_app_with_grpc_options(default_objects: list[Manifest]) -> None:
    config = serve_config(default_objects)
    assert config["grpc_options"]["port"] == 50053
    assert config["grpc_options"]["grpc_servicer_functions"] == [
        "ragfleet.generator.v1.generator_pb2_grpc.add_GeneratorServiceServicer_to_server",
        "grpc_health.v1.health_pb2_grpc.add_HealthServicer_to_server",
    ]
    (app,) = config["applications"]
    assert app["import_path"] == "ragfleet_generator.app:app_builder"
    env = app["runtime_env"]["env_vars"]
    assert env["RAGFLEET_GENERATOR_ENGINE"] == "llama_cpp"
    assert env["RAGFLEET_GENERATOR_PORT"] == "50053"
    assert all(isinstance(v, str) for v in env.values())
    assert "deployments" not in app


@pytest.mark.parametrize("objects_fixture", ["default_objects", "production_objects"])
def test_serve_config_matches_ray_serve_schema(
    request: pytest.FixtureRequest, objects_fixture: str
) -> None:
    schema = pytest.importorskip("ray.serve.schema")
    schema.ServeDeploySchema.parse_obj(serve_config(request.getfixturevalue(objects_fixture)))


def test_rayservice_shape(default_objects: list[Manifest]) -> None:
    rayservice = find(default_objects, "RayService", f"{RELEASE}-generator")
    assert rayservice["apiVersion"] == "ray.io/v1"
    cluster = rayservice["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == "2.60.0"
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    (cpu,) = cluster["workerGroupSpecs"]
    assert cpu["groupName"] == "cpu"
    assert cpu["minReplicas"] <= cpu["replicas"] <= cpu["maxReplicas"]
    assert "nvidia.com/gpu" not in yaml.safe_dump(rayservice)


@pytest.mark.parametrize("objects_fixture", ["default_objects", "production_objects"])
def test_pods_run_as_non_root_with_a_drain_margin(
    request: pytest.FixtureRequest, objects_fixture: str
) -> None:
    objects: list[Manifest] = request.getfixturevalue(objects_fixture)
    specs = list(all_pod_specs(objects))
    assert len(specs) >= 5
    for spec in specs:
        assert spec["securityContext"]["runAsNonRoot"] is True
        for container in spec["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    for workload in workloads(objects):
        service = workload["metadata"]["name"].removeprefix(f"{RELEASE}-")
        spec = workload["spec"]["template"]["spec"]
        assert spec["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
        assert spec["automountServiceAccountToken"] is False
        grace = float(config_env(objects, service)[f"RAGFLEET_{service.upper()}_GRACE_PERIOD_S"])
        assert spec["terminationGracePeriodSeconds"] > grace


@pytest.mark.parametrize("objects_fixture", ["default_objects", "production_objects"])
def test_nothing_pins_an_architecture(request: pytest.FixtureRequest, objects_fixture: str) -> None:
    rendered = yaml.safe_dump_all(request.getfixturevalue(objects_fixture))
    assert "kubernetes.io/arch" not in rendered
    assert "amd64" not in rendered
    assert "x86" not in rendered


def test_production_switches_backends_and_adds_gpus(production_objects: list[Manifest]) -> None:
    kinds = {(o["kind"], o["metadata"]["name"]) for o in production_objects}
    assert ("Deployment", f"{RELEASE}-retriever") in kinds
    assert ("StatefulSet", f"{RELEASE}-retriever") not in kinds
    assert ("Ingress", f"{RELEASE}-gateway") in kinds

    retriever = find(production_objects, "Deployment", f"{RELEASE}-retriever")
    assert retriever["spec"]["replicas"] == 3
    env = config_env(production_objects, "retriever")
    assert env["RAGFLEET_RETRIEVER_BACKEND"] == "opensearch"
    assert env["RAGFLEET_RETRIEVER_OPENSEARCH_URL"] == "https://opensearch-cluster-master:9200"
    assert "RAGFLEET_RETRIEVER_DATA_DIR" not in env
    secret_env = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in retriever["spec"]["template"]["spec"]["containers"][0]["env"]
        if "valueFrom" in e
    }
    assert secret_env["RAGFLEET_RETRIEVER_OPENSEARCH_PASSWORD"] == {
        "name": "opensearch-credentials",
        "key": "password",
    }

    rayservice = find(production_objects, "RayService", f"{RELEASE}-generator")
    groups = {g["groupName"]: g for g in rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    gpu_container = groups["gpu"]["template"]["spec"]["containers"][0]
    assert gpu_container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "HF_TOKEN"}},
    } in gpu_container["env"]
    assert any(
        t["key"] == "nvidia.com/gpu" for t in groups["gpu"]["template"]["spec"]["tolerations"]
    )

    (app,) = serve_config(production_objects)["applications"]
    env = app["runtime_env"]["env_vars"]
    assert env["RAGFLEET_GENERATOR_ENGINE"] == "vllm"
    assert yaml.safe_load(env["RAGFLEET_GENERATOR_MODELS"]) == [
        "mistral-7b-instruct",
        "llama-2-7b-chat",
    ]
    assert env["RAGFLEET_GENERATOR_NUM_GPUS"] == "1"
    assert "deployments" not in app
    images = {c["image"] for spec in all_pod_specs(production_objects) for c in spec["containers"]}
    assert all(i.startswith("registry.example.com/acme/ragfleet/") for i in images)
    assert all(i.endswith(":1.2.3") for i in images)


def test_services_can_be_turned_off(render: Render) -> None:
    objects = render("generator.enabled=false", "gateway.upstreams.generator.address=llm:50053")
    assert not [o for o in objects if o["kind"] == "RayService"]
    assert config_env(objects, "gateway")["RAGFLEET_GATEWAY_GENERATOR_ADDRESS"] == "llm:50053"


def test_embedded_index_refuses_more_than_one_replica(refusal: Refusal) -> None:
    error = refusal("retriever.replicaCount=2", *CHART_VALUES["ragfleet"])
    assert "backend=embedded keeps the index in one pod's volume" in error


def _validation_targets(objects: list[Manifest]) -> Iterator[Manifest]:
    """Every core object, plus the RayService's pod templates as v1 PodTemplates."""
    for obj in objects:
        if obj["kind"] == "RayService":
            for index, template in enumerate(ray_pod_templates(obj)):
                yield {
                    "apiVersion": "v1",
                    "kind": "PodTemplate",
                    "metadata": {"name": f"{obj['metadata']['name']}-{index}"},
                    "template": template,
                }
        else:
            yield obj


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("objects_fixture", ["default_objects", "production_objects"])
def test_objects_match_the_kubernetes_schemas(
    request: pytest.FixtureRequest, objects_fixture: str, version: str
) -> None:
    objects: list[Manifest] = request.getfixturevalue(objects_fixture)
    targets = list(_validation_targets(objects))
    assert len(targets) > len(objects)
    for target in targets:
        kubernetes_validate.validate(target, version, strict=True)


@pytest.mark.parametrize("chart", SERVICE_CHARTS)
def test_every_chart_setting_is_a_setting_of_its_service(chart: str) -> None:
    """A key of a chart's ``settings:`` becomes ``RAGFLEET_<SERVICE>_<KEY>``, which the service
    refuses at start-up unless it names a setting: a chart must not ship such a key."""
    settings_class = {
        "embedder": "ragfleet_embedder.settings:EmbedderSettings",
        "retriever": "ragfleet_retriever.settings:RetrieverSettings",
        "generator": "ragfleet_generator.settings:GeneratorSettings",
        "gateway": "ragfleet_gateway.settings:GatewaySettings",
    }[chart]
    module, name = settings_class.split(":")
    fields = getattr(importlib.import_module(module), name).model_fields
    values = yaml.safe_load((REPO / "helm" / chart / "values.yaml").read_text())
    keys = set(values.get("settings") or {})
    if chart == "generator":  # gpu.vllm.<key> becomes the setting vllm_<key>
        keys |= {f"vllm_{key}" for key in values["gpu"]["vllm"]}
    assert keys <= set(fields)


def _helm_schema() -> ModuleType:
    """scripts/helm_schema.py, which writes each service chart's values.schema.json."""
    name = "ragfleet_scripts_helm_schema"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / "helm_schema.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while it executes
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_values_schemas_are_current() -> None:
    """helm/<service>/values.schema.json is generated from the chart's values.yaml and its
    service's settings model; a change to either must be followed by regenerating it."""
    message = _helm_schema().check()
    assert message is None, message


def test_schema_check_names_the_stale_chart(tmp_path: Path) -> None:
    shutil.copytree(REPO / "helm", tmp_path / "helm", ignore=shutil.ignore_patterns("charts"))
    (tmp_path / "helm" / "retriever" / "values.schema.json").write_text("{}\n")
    message = _helm_schema().check(tmp_path)
    assert message is not None
    assert "retriever" in message and "embedder" not in message
    assert "scripts/helm_schema.py" in message


@pytest.mark.parametrize(
    ("chart", "override", "offender"),
    [
        ("embedder", "settings.batch_sise=3", "batch_sise"),
        ("embedder", "settings.batch_size=many", "batch_size"),
        ("embedder", "settings.port=9000", "port"),  # set by the chart from ports.grpc
        ("retriever", "settings.vector_dtype=f16", "vector_dtype"),
        ("generator", "gpu.vllm.dtyp=half", "dtyp"),
        ("ragfleet", "gateway.settings.log_level=LOUD", "log_level"),
        # Credentials and keys come from Secrets (global.serviceCredential, gateway auth), never
        # from a ConfigMap.
        ("embedder", "settings.service_credential=hunter2", "service_credential"),
        ("generator", "settings.service_credential_file=/x", "service_credential_file"),
        ("gateway", "settings.api_keys_file=/x", "api_keys_file"),
        ("gateway", "settings.auth_disabled=true", "auth_disabled"),
    ],
)
def test_schema_refuses_a_wrong_setting(
    refusal: Refusal, chart: str, override: str, offender: str
) -> None:
    error = refusal(override, chart=chart)
    assert "schema" in error
    assert offender in error


def test_schema_takes_settings_written_as_strings(
    helm: Callable[..., subprocess.CompletedProcess[str]], charts: Path
) -> None:
    """Settings become environment strings, so a value may also be written as one."""
    strings = {
        "batch_size": "16",
        "max_batch_wait_ms": "0.5",
        "normalize_embeddings": "false",
        "reranker_allow_download": "yes",
    }
    args = ["template", RELEASE, str(charts / "embedder")]
    args += [arg for value in CHART_VALUES["embedder"] for arg in ("--set", value)]
    for key, value in strings.items():
        args += ["--set-string", f"settings.{key}={value}"]
    objects = [doc for doc in yaml.safe_load_all(helm(*args).stdout) if doc]
    env = config_env(objects, "embedder")
    for key, value in strings.items():
        assert env[f"RAGFLEET_EMBEDDER_{key.upper()}"] == value


@pytest.mark.parametrize(
    ("pattern", "python_type"),
    [("_INT_TEXT", int), ("_NUMBER_TEXT", float), ("_BOOL_TEXT", bool)],
)
def test_schema_text_forms_are_what_pydantic_parses(pattern: str, python_type: type) -> None:
    """The schema's patterns for numbers and booleans written as strings accept exactly the
    strings the settings models parse (on these samples)."""
    regex = re.compile(getattr(_helm_schema(), pattern))
    adapter = TypeAdapter(python_type)
    samples = [
        *("3", " 3 ", "+3", "-3", "3.0", "3.", "3.5", ".5", "1_000", "1__0", "_1", "1e3"),
        *("1E-3", "0x10", "", "abc", "true", "False", "YES", "off", "y", "1", "0", "2", "ja"),
    ]
    for sample in samples:
        try:
            adapter.validate_python(sample)
            parses = True
        except ValidationError:
            parses = False
        assert bool(regex.search(sample)) == parses, sample


def test_metrics_ports_are_exposed_and_annotated(default_objects: list[Manifest]) -> None:
    for service in ("embedder", "retriever", "gateway"):
        assert (
            config_env(default_objects, service)[f"RAGFLEET_{service.upper()}_METRICS_PORT"]
            == "9090"
        )
        svc = find(default_objects, "Service", f"{RELEASE}-{service}")
        assert {"name": "metrics", "port": 9090}.items() <= svc["spec"]["ports"][-1].items()
        assert svc["metadata"]["annotations"]["prometheus.io/port"] == "9090"
        (workload,) = [
            o for o in workloads(default_objects) if o["metadata"]["name"].endswith(service)
        ]
        pod = workload["spec"]["template"]
        assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
        assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in pod["spec"][
            "containers"
        ][0]["ports"]
    assert not [o for o in default_objects if o["kind"] == "ServiceMonitor"]


def test_service_monitors_are_optional(render: Render) -> None:
    objects = render(
        *(f"{s}.metrics.serviceMonitor.enabled=true" for s in ("embedder", "retriever", "gateway")),
        "gateway.metrics.serviceMonitor.labels.release=prometheus",
    )
    monitors = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ServiceMonitor"}
    assert set(monitors) == {f"{RELEASE}-{s}" for s in ("embedder", "retriever", "gateway")}
    gateway = monitors[f"{RELEASE}-gateway"]
    assert gateway["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "30s"}
    ]
    assert gateway["metadata"]["labels"]["release"] == "prometheus"
    off = render("gateway.ports.metrics=0")
    assert config_env(off, "gateway")["RAGFLEET_GATEWAY_METRICS_PORT"] == "0"
    ports = find(off, "Service", f"{RELEASE}-gateway")["spec"]["ports"]
    assert "metrics" not in [p["name"] for p in ports]


# --- authentication: the service credential and the gateway's API keys ------------------------


def secret_volumes(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v["secret"] for v in spec["volumes"] if "secret" in v}


def mounts(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in container.get("volumeMounts", [])}


def plain_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


@pytest.mark.parametrize("objects_fixture", ["default_objects", "production_objects"])
def test_every_pod_mounts_the_service_credential(
    request: pytest.FixtureRequest, objects_fixture: str
) -> None:
    objects: list[Manifest] = request.getfixturevalue(objects_fixture)
    pods = list(pods_by_service(objects))
    assert {service for service, _ in pods} == set(SERVICE_CHARTS)
    for service, spec in pods:
        assert secret_volumes(spec)["service-credential"] == {
            "secretName": f"{RELEASE}-service-credential",
            "items": [{"key": "credential", "path": "credential"}],
            "defaultMode": 0o444,
        }, service
        (container,) = spec["containers"]
        mount = mounts(container)["service-credential"]
        assert mount == {
            "name": "service-credential",
            "mountPath": CREDENTIAL_DIR,
            "readOnly": True,
        }
        assert "subPath" not in mount
        variable = f"RAGFLEET_{service.upper()}_SERVICE_CREDENTIAL_FILE"
        assert plain_env(container)[variable] == f"{CREDENTIAL_DIR}/credential", service


def test_the_release_creates_one_random_service_credential(
    default_objects: list[Manifest], render: Render
) -> None:
    (secret,) = [o for o in default_objects if o["kind"] == "Secret"]
    assert secret["metadata"]["name"] == f"{RELEASE}-service-credential"
    value = base64.b64decode(secret["data"]["credential"]).decode()
    assert re.fullmatch(r"[A-Za-z0-9]{48}", value)
    (again,) = [o for o in render() if o["kind"] == "Secret"]
    # No cluster to look the Secret up in: every render draws a new value (an upgrade keeps it).
    assert again["data"]["credential"] != secret["data"]["credential"]


def test_an_existing_service_credential_secret_is_used_as_it_is(render: Render) -> None:
    objects = render(
        "global.serviceCredential.existingSecret=fleet-credential",
        "global.serviceCredential.key=token",
    )
    assert not [o for o in objects if o["kind"] == "Secret"]
    for service, spec in pods_by_service(objects):
        volume = secret_volumes(spec)["service-credential"]
        assert volume["secretName"] == "fleet-credential"
        assert volume["items"] == [{"key": "token", "path": "token"}]
        variable = f"RAGFLEET_{service.upper()}_SERVICE_CREDENTIAL_FILE"
        assert plain_env(spec["containers"][0])[variable] == f"{CREDENTIAL_DIR}/token"


@pytest.mark.parametrize("chart", SERVICE_CHARTS)
def test_a_service_chart_alone_needs_an_existing_credential_secret(
    refusal: Refusal, render: Render, chart: str
) -> None:
    keys = (f"auth.apiKeysSecret.name={API_KEYS_SECRET}",) if chart == "gateway" else ()
    error = refusal(*keys, chart=chart)
    assert "the fleet's service credential is not configured" in error
    assert "global.serviceCredential.existingSecret" in error

    objects = render(chart=chart)
    assert not [o for o in objects if o["kind"] == "Secret"]
    pods = list(pods_by_service(objects))
    assert pods
    for service, spec in pods:
        assert service == chart
        assert secret_volumes(spec)["service-credential"]["secretName"] == "fleet-credential"


@pytest.mark.parametrize(
    ("chart", "override"),
    [
        ("ragfleet", "gateway.auth.apiKeysSecret.key=keys.yaml"),
        ("gateway", "auth.apiKeysSecret.key=keys.yaml"),
    ],
)
def test_gateway_reads_its_api_keys_from_the_secret(
    render: Render, chart: str, override: str
) -> None:
    objects = render(override, chart=chart)
    spec = find(objects, "Deployment", f"{RELEASE}-gateway")["spec"]["template"]["spec"]
    assert secret_volumes(spec)["api-keys"] == {
        "secretName": API_KEYS_SECRET,
        "items": [{"key": "keys.yaml", "path": "keys.yaml"}],
        "defaultMode": 0o444,
    }
    (container,) = spec["containers"]
    # A directory, not a subPath: Kubernetes then updates the file in place when the Secret
    # changes, and the gateway re-reads it.
    assert mounts(container)["api-keys"] == {
        "name": "api-keys",
        "mountPath": "/etc/ragfleet/api-keys",
        "readOnly": True,
    }
    env = plain_env(container)
    assert env["RAGFLEET_GATEWAY_API_KEYS_FILE"] == "/etc/ragfleet/api-keys/keys.yaml"
    assert "RAGFLEET_GATEWAY_AUTH_DISABLED" not in env
    assert "API_KEYS" not in yaml.safe_dump(config_env(objects, "gateway"))


@pytest.mark.parametrize(
    ("chart", "values"),
    [
        ("ragfleet", ()),
        ("gateway", ("global.serviceCredential.existingSecret=fleet-credential",)),
    ],
)
def test_gateway_without_api_keys_does_not_render(
    refusal: Refusal, chart: str, values: tuple[str, ...]
) -> None:
    error = refusal(*values, chart=chart)
    assert "gateway: no API keys: set auth.apiKeysSecret.name" in error
    assert "auth.disabled=true for experiments only" in error


def test_gateway_auth_can_be_disabled_for_experiments(render: Render) -> None:
    objects = render("gateway.auth.apiKeysSecret.name=", "gateway.auth.disabled=true")
    spec = find(objects, "Deployment", f"{RELEASE}-gateway")["spec"]["template"]["spec"]
    assert "api-keys" not in secret_volumes(spec)
    env = plain_env(spec["containers"][0])
    assert env["RAGFLEET_GATEWAY_AUTH_DISABLED"] == "true"
    assert "RAGFLEET_GATEWAY_API_KEYS_FILE" not in env
    # The internal services still require the service credential.
    assert "service-credential" in secret_volumes(spec)


def test_gateway_refuses_both_api_keys_and_auth_disabled(refusal: Refusal) -> None:
    error = refusal(*CHART_VALUES["ragfleet"], "gateway.auth.disabled=true")
    assert "auth.disabled=true and auth.apiKeysSecret.name are both set" in error


def test_gateway_records_answers_in_the_store_its_secret_names(render: Render) -> None:
    container = find(render(), "Deployment", f"{RELEASE}-gateway")["spec"]["template"]["spec"][
        "containers"
    ][0]
    names = [e["name"] for e in container["env"]]
    assert "RAGFLEET_GATEWAY_FEEDBACK_STORE" not in names, "no store unless a Secret names one"
    objects = render("gateway.feedback.storeSecret.name=answers-db")
    (container,) = find(objects, "Deployment", f"{RELEASE}-gateway")["spec"]["template"]["spec"][
        "containers"
    ]
    env = {e["name"]: e for e in container["env"]}
    # The URL holds the database password: it comes from the Secret, never the ConfigMap.
    assert env["RAGFLEET_GATEWAY_FEEDBACK_STORE"]["valueFrom"] == {
        "secretKeyRef": {"name": "answers-db", "key": "url"}
    }
    assert plain_env(container)["RAGFLEET_GATEWAY_FEEDBACK_SPOOL_DIR"] == "/tmp/feedback-spool"
    assert "FEEDBACK_STORE" not in yaml.safe_dump(config_env(objects, "gateway"))
