"""Checks of cluster/ (Ray cluster launcher configs, KubeRay manifests, Dockerfile) and docs/cluster.md.

Everything here runs offline, without cloud SDKs or credentials:

- Launcher YAMLs go through Ray's own validator, `ray.autoscaler._private.util.validate_config`
  (jsonschema against the `ray/autoscaler/ray-schema.json` the installed wheel ships, plus its
  head-node-type and min/max-worker checks), once on the raw file and once on the output of
  `prepare_config`, which is what `ray up` validates. `prepare_config` only merges the provider's
  `defaults.yaml` from the wheel and fills per-type worker bounds: it imports neither boto3 nor the
  Google API client, which `test_prepare_config_needs_no_cloud_sdk` asserts by blocking them. The
  remaining `ray up` steps (the provider's resource autodetection and `bootstrap_config`: key
  pairs, IAM, subnets) call the cloud APIs and cannot run here; the configs spell out CPU and GPU
  counts, so autodetection has nothing to add that these checks rely on.
- KubeRay manifests are checked against a small hand-written subset of the ray.io/v1 CRD schemas
  (tests/fixtures/kuberay/) and against the operator's own admission rules, restated here.
- rayot's own rules: image tags carry the installed Ray and Python, the dashboard is never
  opened to the internet, GPU node types on GCP state their resources and terminate on host
  maintenance, commands in the manifests and docs parse with rayot's CLI.
"""

from __future__ import annotations

import copy
import importlib.abc
import importlib.util
import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import typer
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from rayot.cli import app

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
DOCS = ROOT / "docs" / "cluster.md"
SUBSET_SCHEMA = ROOT / "tests" / "fixtures" / "kuberay" / "ray.io_v1_subset.schema.json"
LAUNCHERS = {"aws": CLUSTER / "aws.yaml", "gcp": CLUSTER / "gcp.yaml"}
#: the local autoscaling cluster (Ray's fake multi-node provider), scripts/local_cluster.py
LOCAL = CLUSTER / "local-fake.yaml"
MANIFESTS = [CLUSTER / "kuberay" / "raycluster.yaml", CLUSTER / "kuberay" / "rayjob.yaml"]

RAY_VERSION = ray.__version__
PY_TAG = f"py{sys.version_info.major}{sys.version_info.minor}"
DASHBOARD_PORT = 8265
PUBLIC_CIDRS = {"0.0.0.0/0", "::/0"}
PLACEHOLDER = re.compile(r"YOUR-[A-Z0-9]+(?:-[A-Z0-9]+)*")
# Cloud SDK modules that offline validation must not need (google.protobuf, which ray itself
# uses, stays allowed).
CLOUD_SDKS = ("boto3", "botocore", "googleapiclient", "google_auth_httplib2", "google.auth",
              "google.oauth2", "google.cloud")


def _load(path: Path) -> dict[str, Any]:
    with path.open() as f:
        return yaml.safe_load(f)


def _manifest(path: Path) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert len(docs) == 1, f"{path.name}: expected one document, found {len(docs)}"
    return docs[0]


# --------------------------------------------------------------------------- launcher YAMLs


@pytest.mark.parametrize("provider", sorted(LAUNCHERS))
def test_launcher_yaml_passes_rays_validator_raw(provider: str) -> None:
    cfg = _load(LAUNCHERS[provider])
    assert cfg["provider"]["type"] == provider
    validate_config(copy.deepcopy(cfg))


@pytest.mark.parametrize("provider", sorted(LAUNCHERS))
def test_launcher_yaml_passes_rays_validator_as_ray_up_prepares_it(provider: str) -> None:
    prepared = prepare_config(copy.deepcopy(_load(LAUNCHERS[provider])))
    validate_config(prepared)
    # The merge with the provider defaults must keep our overrides: the defaults bind the
    # dashboard to 0.0.0.0 and install a nightly Ray wheel in setup_commands.
    assert _launcher_problems(prepared) == []
    commands = [c for key in ("setup_commands", "head_setup_commands", "worker_setup_commands")
                for c in prepared[key]]
    assert not any("ray-wheels" in c or "pip install -U" in c and "ray" in c for c in commands)
    for name, node_type in prepared["available_node_types"].items():
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"], name


def test_validator_catches_a_misspelt_key() -> None:
    # The validator used above must not accept anything: a typo at the top level fails.
    cfg = _load(LAUNCHERS["aws"])
    cfg["idle_timeout_minute"] = cfg.pop("idle_timeout_minutes")
    with pytest.raises(jsonschema.ValidationError, match="idle_timeout_minute"):
        validate_config(cfg)


def _local_cluster_script():
    spec = importlib.util.spec_from_file_location("local_cluster", ROOT / "scripts" / "local_cluster.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("local_cluster", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_local_cluster_config_passes_rays_validator() -> None:
    # What the autoscaler runs on it when `ray start --head --autoscaling-config` starts the
    # monitor (StandardAutoscaler.reset). `prepare_config` is `ray up`'s step, which a fake
    # cluster does not take (and the wheel lacks the fake provider's defaults file it would merge).
    cfg = _load(LOCAL)
    validate_config(copy.deepcopy(cfg))
    typo = copy.deepcopy(cfg)
    typo["idle_timeout_minute"] = typo.pop("idle_timeout_minutes")
    with pytest.raises(jsonschema.ValidationError, match="idle_timeout_minute"):
        validate_config(typo)


def test_local_cluster_config_scales_one_cpu_workers_from_zero(tmp_path: Path) -> None:
    cfg = _load(LOCAL)
    assert cfg["provider"]["type"] == "fake_multinode"
    head_type = cfg["head_node_type"]
    head = cfg["available_node_types"][head_type]["resources"]
    # trials' workers never land on the head; the sweep's Tune drivers take driver slots there
    assert head.get("CPU", 0) == 0 and head.get("GPU", 0) == 0 and head["driver_slot"] >= 2
    workers = {k: v for k, v in cfg["available_node_types"].items() if k != head_type}
    assert workers
    for name, node_type in workers.items():
        assert node_type["min_workers"] == 0, name
        assert node_type["resources"]["CPU"] == 1 and not node_type["resources"].get("GPU"), name
        assert 2 <= node_type["max_workers"] <= cfg["max_workers"] <= 3, name
    assert 0 < cfg["idle_timeout_minutes"] <= 1  # back to the head alone within a minute or two
    # the script starts the head with what its node type declares (the fake provider cannot)
    script = _local_cluster_script()
    assert script.head_arguments(cfg) == [
        "--num-cpus=0", "--num-gpus=0", f"--object-store-memory={int(head['object_store_memory'])}",
        f'--resources={{"driver_slot":{head["driver_slot"]}}}']
    assert script.load_config(LOCAL) == cfg
    for broken, message in (({"provider": {"type": "aws"}}, "provider.type must be fake_multinode"),
                            ({"head_node_type": "head"}, "head node type is 'ray.head.default'")):
        (path := tmp_path / "broken.yaml").write_text(yaml.safe_dump({**cfg, **broken}))
        with pytest.raises(script.ClusterError, match=message):
            script.load_config(path)


class _BlockImports(importlib.abc.MetaPathFinder):
    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if any(fullname == n or fullname.startswith(n + ".") for n in self.names):
            raise ImportError(f"{fullname} is blocked: cluster checks must run without cloud SDKs")
        return None


@pytest.mark.parametrize("provider", sorted(LAUNCHERS))
def test_prepare_config_needs_no_cloud_sdk(provider: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(sys.modules):
        if any(name == n or name.startswith(n + ".") for n in CLOUD_SDKS):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [_BlockImports(CLOUD_SDKS), *sys.meta_path])
    prepared = prepare_config(copy.deepcopy(_load(LAUNCHERS[provider])))
    validate_config(prepared)
    assert not [n for n in sys.modules if any(n == s or n.startswith(s + ".") for s in CLOUD_SDKS)]


def _is_gpu_type(node_type: dict[str, Any]) -> bool:
    nc = node_type.get("node_config", {})
    return (
        node_type.get("resources", {}).get("GPU", 0) > 0
        or bool(nc.get("guestAccelerators"))
        or str(nc.get("machineType", "")).startswith(("a2-", "a3-", "a4-", "g2-", "g4-"))
        or str(nc.get("InstanceType", "")).startswith(("g4", "g5", "g6", "p3", "p4", "p5", "p6"))
    )


def _opens_dashboard(rule: dict[str, Any]) -> bool:
    """Whether an AWS IpPermissions rule lets the internet reach the dashboard port."""
    cidrs = {r.get("CidrIp") for r in rule.get("IpRanges", [])}
    cidrs |= {r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])}
    if not cidrs & PUBLIC_CIDRS:
        return False
    if str(rule.get("IpProtocol")) == "-1":
        return True
    lo, hi = rule.get("FromPort", -1), rule.get("ToPort", -1)
    return lo == -1 or lo <= DASHBOARD_PORT <= hi


def _launcher_problems(cfg: dict[str, Any]) -> list[str]:
    """rayot's lint of a launcher config (raw or prepared); an empty list means it passes."""
    problems = []
    types = cfg.get("available_node_types", {})
    head = cfg.get("head_node_type")
    if head not in types:
        problems.append(f"head_node_type {head!r} is not one of available_node_types")
    gcp = cfg["provider"]["type"] == "gcp"
    for name, node_type in types.items():
        if name == head:
            continue
        if not _is_gpu_type(node_type) or node_type.get("resources", {}).get("GPU", 0) < 1:
            problems.append(f"worker type {name}: not a GPU type with resources.GPU >= 1")
    for name, node_type in types.items():
        if gcp and not node_type.get("resources"):
            problems.append(f"{name}: GCP node types need explicit resources (no autodetection)")
        if gcp and _is_gpu_type(node_type):
            scheduling = node_type.get("node_config", {}).get("scheduling")
            if not isinstance(scheduling, dict) or scheduling.get("onHostMaintenance") != "TERMINATE":
                problems.append(f"{name}: GPU VMs need scheduling: {{onHostMaintenance: TERMINATE}}")
    start = " ".join(cfg.get("head_start_ray_commands", []))
    if "--dashboard-host=127.0.0.1" not in start or "0.0.0.0" in start:
        problems.append("head_start_ray_commands must bind the dashboard to 127.0.0.1")
    for rule in cfg["provider"].get("security_group", {}).get("IpPermissions", []):
        if _opens_dashboard(rule):
            problems.append(f"security group rule opens port {DASHBOARD_PORT} to the internet: {rule}")
    docker = cfg.get("docker", {})
    run_options = [*docker.get("run_options", []), *docker.get("head_run_options", [])]
    for option in run_options:
        if re.match(r"\s*(-p|--publish)\b", option) and str(DASHBOARD_PORT) in option:
            problems.append(f"docker run option publishes the dashboard: {option}")
    return problems


@pytest.mark.parametrize("provider", sorted(LAUNCHERS))
def test_launcher_yaml_passes_rayot_lint(provider: str) -> None:
    assert _launcher_problems(_load(LAUNCHERS[provider])) == []


def _drop_head_type(cfg: dict[str, Any]) -> None:
    cfg["head_node_type"] = "no_such_type"


def _gcp_empty_resources(cfg: dict[str, Any]) -> None:
    cfg["available_node_types"]["gpu_a100_x1"]["resources"] = {}


def _gcp_scheduling_as_list(cfg: dict[str, Any]) -> None:
    # The form of some upstream examples, which the GCE API rejects.
    cfg["available_node_types"]["gpu_a100_x4"]["node_config"]["scheduling"] = [
        {"onHostMaintenance": "TERMINATE"}]


def _public_dashboard_host(cfg: dict[str, Any]) -> None:
    cfg["head_start_ray_commands"] = [
        c.replace("127.0.0.1", "0.0.0.0") for c in cfg["head_start_ray_commands"]]


def _open_dashboard_port(cfg: dict[str, Any]) -> None:
    cfg["provider"]["security_group"] = {"GroupName": "rayot", "IpPermissions": [
        {"FromPort": 8000, "ToPort": 9000, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]}


def _publish_dashboard(cfg: dict[str, Any]) -> None:
    cfg["docker"]["run_options"].append("-p 8265:8265")


@pytest.mark.parametrize(("provider", "breaks"), [
    ("aws", _drop_head_type),
    ("gcp", _gcp_empty_resources),
    ("gcp", _gcp_scheduling_as_list),
    ("gcp", _public_dashboard_host),
    ("aws", _open_dashboard_port),
    ("aws", _publish_dashboard),
])
def test_rayot_lint_catches_broken_launcher_configs(provider: str, breaks: Any) -> None:
    cfg = _load(LAUNCHERS[provider])
    breaks(cfg)
    assert _launcher_problems(cfg), f"{breaks.__name__} went unnoticed"


def test_security_group_rule_that_spares_the_dashboard_passes() -> None:
    ssh_only = {"FromPort": 22, "ToPort": 22, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
    private = {"FromPort": -1, "ToPort": -1, "IpProtocol": "-1", "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}
    assert not _opens_dashboard(ssh_only)
    assert not _opens_dashboard(private)
    assert _opens_dashboard({**private, "Ipv6Ranges": [{"CidrIpv6": "::/0"}]})


# --------------------------------------------------------------------------- images and versions


def _image_refs() -> dict[str, str]:
    """Every container image named in cluster/: where -> reference."""
    refs: dict[str, str] = {}
    for provider, path in LAUNCHERS.items():
        cfg = _load(path)
        docker = cfg.get("docker", {})
        for key in ("image", "head_image", "worker_image"):
            if key in docker:
                refs[f"{provider}: docker.{key}"] = docker[key]
        for name, node_type in cfg["available_node_types"].items():
            if "worker_image" in node_type.get("docker", {}):
                refs[f"{provider}: {name}.docker.worker_image"] = node_type["docker"]["worker_image"]
    for line in (CLUSTER / "Dockerfile").read_text().splitlines():
        if line.strip().upper().startswith("FROM "):
            image = [t for t in line.split()[1:] if not t.startswith("--")][0]
            refs[f"Dockerfile: {line.strip()}"] = image
    for path in MANIFESTS:
        for where, image in _walk_images(_manifest(path), path.name):
            refs[where] = image
    return refs


def _walk_images(node: Any, where: str) -> list[tuple[str, str]]:
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "image" and isinstance(value, str):
                found.append((f"{where}.image", value))
            else:
                found += _walk_images(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _walk_images(value, f"{where}[{i}]")
    return found


def _carries_version(tag: str) -> bool:
    return re.search(rf"(?<![\d.]){re.escape(RAY_VERSION)}(?![\d.])", tag) is not None


def test_every_image_carries_the_installed_ray_and_python() -> None:
    refs = _image_refs()
    # The two launcher configs, the Dockerfile and the pods of both manifests all name one.
    assert len(refs) >= 2 + 1 + 2 + 2, refs
    for where, ref in refs.items():
        assert ":" in ref.rsplit("/", 1)[-1], f"{where}: {ref} has no tag"
        tag = ref.rsplit(":", 1)[1]
        assert _carries_version(tag), f"{where}: {ref} is not Ray {RAY_VERSION}"
        assert PY_TAG in tag.split("-"), f"{where}: {ref} is not Python {PY_TAG}"
        assert "ray-ml" not in ref, f"{where}: rayproject/ray-ml is no longer published"
    froms = [ref for where, ref in refs.items() if where.startswith("Dockerfile")]
    assert froms == [f"rayproject/ray:{RAY_VERSION}-{PY_TAG}-gpu"]


def test_version_strings_in_text_match_the_installed_ray() -> None:
    # Comments and docs too: a stale tag in the instructions is as wrong as one in the config.
    texts = {p: p.read_text() for p in [*CLUSTER.rglob("*"), DOCS] if p.is_file()}
    tags = [(p.name, m) for p, t in texts.items()
            for m in re.findall(r"(?:rayproject/ray[\w-]*|/rayot):([\w.-]+)", t)]
    pins = [(p.name, m) for p, t in texts.items() for m in re.findall(r"ray\[[\w,]*\]==([\w.]+)", t)]
    versions = [(p.name, m) for p, t in texts.items() for m in re.findall(r"rayVersion:\s*\"?([\w.]+)", t)]
    assert tags and pins and versions
    for name, tag in tags:
        assert _carries_version(tag) and PY_TAG in tag, f"{name}: image tag {tag}"
    for name, pin in pins + versions:
        assert pin == RAY_VERSION, f"{name}: Ray {pin}, installed {RAY_VERSION}"


def test_image_check_catches_a_stale_tag() -> None:
    assert _carries_version(f"ray{RAY_VERSION}-{PY_TAG}-gpu")
    assert not _carries_version(f"{RAY_VERSION}1-{PY_TAG}-gpu")
    assert not _carries_version(f"2.30.0-{PY_TAG}-gpu")


def test_dockerfile_copies_only_what_its_dockerignore_lets_through() -> None:
    text = (CLUSTER / "Dockerfile").read_text()
    allowed = {
        line[1:].strip().rstrip("/")
        for line in (CLUSTER / "Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    sources = [s for line in text.splitlines() if line.startswith("COPY ")
               for s in [t for t in line.split()[1:] if not t.startswith("--")][:-1]]
    assert sources
    for source in sources:
        name = re.sub(r"\[(\w)\]", r"\1", source).rstrip("/")  # README.m[d] -> README.md
        assert name in allowed, f"COPY {source} is excluded by Dockerfile.dockerignore"
    for needed in ("pyproject.toml", "rayot", "sweeps"):
        assert (ROOT / needed).exists() and needed in allowed


# --------------------------------------------------------------------------- KubeRay


def _subset_validator(kind: str) -> jsonschema.protocols.Validator:
    schema = json.loads(SUBSET_SCHEMA.read_text())
    return jsonschema.Draft202012Validator({**schema, "$ref": f"#/$defs/{kind}"})


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_kuberay_manifest_matches_the_crd_subset(path: Path) -> None:
    doc = _manifest(path)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in _subset_validator(doc["kind"]).iter_errors(doc)]
    assert errors == []


def test_crd_subset_rejects_what_the_api_server_would() -> None:
    doc = _manifest(MANIFESTS[0])
    bad = copy.deepcopy(doc)
    del bad["spec"]["workerGroupSpecs"][0]["maxReplicas"]
    bad["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0  # must be a string
    bad["spec"]["enableInTreeAutoscailng"] = True
    messages = " ".join(e.message for e in _subset_validator("RayCluster").iter_errors(bad))
    assert "'maxReplicas' is a required property" in messages
    assert "0 is not of type 'string'" in messages
    assert "enableInTreeAutoscailng" in messages


def _cluster_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]


def _kuberay_problems(doc: dict[str, Any]) -> list[str]:
    """The KubeRay operator's admission rules (ray-operator/controllers/ray/utils/validation.go,
    v1.7.0) that apply to these manifests, plus rayot's: GPUs, autoscaling, a private dashboard."""
    problems = []
    kind, name = doc.get("kind"), doc.get("metadata", {}).get("name", "")
    max_len = {"RayCluster": 53, "RayJob": 47}.get(kind, 0)
    if doc.get("apiVersion") != "ray.io/v1" or not max_len:
        return [f"not a ray.io/v1 RayCluster or RayJob: {doc.get('apiVersion')} {kind}"]
    if len(name) > max_len or not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name):
        problems.append(f"metadata.name {name!r}: a DNS-1035 label of at most {max_len} characters")
    if kind == "RayJob":
        spec = doc["spec"]
        if not spec.get("entrypoint", "").strip():
            problems.append("RayJob without an entrypoint")
        if not spec.get("rayClusterSpec") and not spec.get("clusterSelector"):
            problems.append("RayJob needs rayClusterSpec or clusterSelector")
        if spec.get("clusterSelector") and spec.get("backoffLimit", 0) > 0:
            problems.append("backoffLimit is incompatible with clusterSelector")
        if spec.get("rayClusterSpec") and spec.get("shutdownAfterJobFinishes") is not True:
            problems.append("a RayJob with its own cluster must set shutdownAfterJobFinishes: true")
        if spec.get("ttlSecondsAfterFinished", 0) < 0 or spec.get("backoffLimit", 0) < 0:
            problems.append("ttlSecondsAfterFinished and backoffLimit must be >= 0")
        if "activeDeadlineSeconds" in spec and spec["activeDeadlineSeconds"] <= 0:
            problems.append("activeDeadlineSeconds must be positive")
        if not spec.get("rayClusterSpec"):
            return problems
    cs = _cluster_spec(doc)
    if cs.get("rayVersion") != RAY_VERSION:
        problems.append(f"rayVersion {cs.get('rayVersion')!r} is not the installed Ray {RAY_VERSION}")
    if cs.get("enableInTreeAutoscaling") is not True:
        problems.append("enableInTreeAutoscaling must be true")
    head = cs["headGroupSpec"]
    if head.get("serviceType", "ClusterIP") != "ClusterIP" or head.get("enableIngress"):
        problems.append("the head service must stay ClusterIP without ingress (private dashboard)")
    groups = [("head", head), *[(g.get("groupName", "?"), g) for g in cs.get("workerGroupSpecs", [])]]
    if len(groups) < 2:
        problems.append("no worker group")
    resource_keys = {"num-cpus", "num-gpus", "memory", "resources"}
    for group_name, group in groups:
        params = group.get("rayStartParams", {})
        if resource_keys & set(params) and group.get("resources"):
            problems.append(f"{group_name}: resources set in both rayStartParams and resources")
        if "labels" in params:
            problems.append(f"{group_name}: rayStartParams['labels'] is not supported")
        pod = group["template"]["spec"]
        if pod.get("restartPolicy", "Never") != "Never":
            problems.append(f"{group_name}: restartPolicy must be Never or unset (autoscaler v2)")
        containers = pod.get("containers", [])
        if not containers or not all(c.get("image") for c in containers):
            problems.append(f"{group_name}: needs at least one container, each with an image")
        if group is head:
            continue
        lo, hi = group.get("minReplicas", 0), group.get("maxReplicas", 2**31 - 1)
        if not 0 <= lo <= hi or not lo <= group.get("replicas", lo) <= hi:
            problems.append(f"{group_name}: needs 0 <= minReplicas <= replicas <= maxReplicas")
        ray_container = containers[0] if containers else {}
        limits = ray_container.get("resources", {}).get("limits", {})
        requests = ray_container.get("resources", {}).get("requests", {})
        if int(limits.get("nvidia.com/gpu", 0)) < 1:
            problems.append(f"{group_name}: no nvidia.com/gpu limit")
        if "nvidia.com/gpu" in requests and requests["nvidia.com/gpu"] != limits.get("nvidia.com/gpu"):
            problems.append(f"{group_name}: nvidia.com/gpu requests must equal limits")
    return problems


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_kuberay_manifest_passes_operator_and_rayot_rules(path: Path) -> None:
    assert _kuberay_problems(_manifest(path)) == []


def _container(doc: dict[str, Any], group: str) -> dict[str, Any]:
    cs = _cluster_spec(doc)
    spec = cs["headGroupSpec"] if group == "head" else cs["workerGroupSpecs"][0]
    return spec["template"]["spec"]["containers"][0]


def test_operator_rules_catch_broken_manifests() -> None:
    cluster, job = _manifest(MANIFESTS[0]), _manifest(MANIFESTS[1])
    breakages = {
        "long name": lambda d: d["metadata"].update(name="x" * 60),
        "no gpu": lambda d: _container(d, "worker")["resources"]["limits"].pop("nvidia.com/gpu"),
        "min > max": lambda d: _cluster_spec(d)["workerGroupSpecs"][0].update(minReplicas=9),
        "public": lambda d: _cluster_spec(d)["headGroupSpec"].update(serviceType="LoadBalancer"),
        "old ray": lambda d: _cluster_spec(d).update(rayVersion="2.30.0"),
        "no image": lambda d: _container(d, "head").pop("image"),
        "both resources": lambda d: _cluster_spec(d)["headGroupSpec"].update(resources={"CPU": "1"}),
    }
    for what, breaks in breakages.items():
        for doc in (cluster, job):
            bad = copy.deepcopy(doc)
            breaks(bad)
            assert _kuberay_problems(bad), f"{what} went unnoticed in {doc['kind']}"
    no_cluster = copy.deepcopy(job)
    del no_cluster["spec"]["rayClusterSpec"]
    assert "RayJob needs rayClusterSpec or clusterSelector" in _kuberay_problems(no_cluster)


def test_rayjob_and_raycluster_describe_the_same_cluster() -> None:
    # rayjob.yaml repeats raycluster.yaml's spec; only the initial worker count may differ.
    cluster = copy.deepcopy(_manifest(MANIFESTS[0])["spec"])
    job_cluster = copy.deepcopy(_manifest(MANIFESTS[1])["spec"]["rayClusterSpec"])
    for spec in (cluster, job_cluster):
        for group in spec["workerGroupSpecs"]:
            group.pop("replicas")
    assert job_cluster == cluster


# --------------------------------------------------------------------------- commands


def _parse_rayot(command: str) -> dict[str, Any]:
    """Parse a `rayot ...` command line with rayot's own CLI, without running it."""
    tokens = shlex.split(command)
    assert tokens[0] == "rayot", command
    cmd, rest, path = typer.main.get_command(app), tokens[1:], ["rayot"]
    while hasattr(cmd, "commands"):  # a command group: descend to the subcommand
        name, rest = rest[0], rest[1:]
        assert name in cmd.commands, f"{command}: no command {name!r}"
        cmd, path = cmd.commands[name], [*path, name]
    return cmd.make_context(" ".join(path), rest).params


def test_rayjob_entrypoint_runs_the_full_benchmark_on_object_storage() -> None:
    spec = _manifest(MANIFESTS[1])["spec"]
    entrypoint = spec["entrypoint"]
    assert entrypoint.startswith("cd /home/ray/rayot && ")  # the image's WORKDIR (Dockerfile)
    assert "WORKDIR /home/ray/rayot" in (CLUSTER / "Dockerfile").read_text()
    params = _parse_rayot(entrypoint.split("&&", 1)[1].strip())
    assert params["spec"] == Path("sweeps/full_benchmark.yaml")
    assert (ROOT / params["spec"]).is_file()
    assert params["address"] == "auto"
    assert params["results_dir"].startswith(("s3://", "gs://"))
    assert params["checkpoints"].startswith(("s3://", "gs://"))
    assert not params["dry_run"]


def test_command_parser_rejects_a_misspelt_flag() -> None:
    with pytest.raises(Exception, match="No such option"):
        _parse_rayot("rayot sweep sweeps/full_benchmark.yaml --adress auto")


def _docs_commands() -> list[str]:
    """`rayot ...` command lines in the fenced code blocks of docs/cluster.md."""
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", DOCS.read_text(), flags=re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" # ")[0].strip()
            if line.startswith("rayot "):
                commands.append(line)
            elif " -- rayot " in line:
                commands.append("rayot " + line.split(" -- rayot ", 1)[1])
    return commands


def test_rayot_commands_in_the_docs_parse_with_the_cli() -> None:
    commands = _docs_commands()
    used = {" ".join(c.split()[:2]) for c in commands}
    assert {"rayot sweep", "rayot report", "rayot data"} <= used, used
    for command in commands:
        _parse_rayot(command)


# --------------------------------------------------------------------------- docs


def test_placeholders_are_all_explained_in_the_docs() -> None:
    docs = DOCS.read_text()
    found = {m for p in CLUSTER.rglob("*") if p.is_file() for m in PLACEHOLDER.findall(p.read_text())}
    assert {"YOUR-BUCKET", "YOUR-REGISTRY"} <= found
    missing = sorted(f for f in found if f"| `{f}` |" not in docs)
    assert missing == [], f"placeholders without a row in docs/cluster.md: {missing}"


def test_docs_name_every_cluster_file() -> None:
    docs = DOCS.read_text()
    files = [p for p in CLUSTER.rglob("*") if p.suffix == ".yaml" or p.name == "Dockerfile"]
    assert len(files) == 6
    for path in files:
        assert f"`{path.relative_to(ROOT).as_posix()}`" in docs, path


def _sweep_estimate(path: Path) -> tuple[int, float]:
    """(trials, A100 GPU-hours) from a sweep file's header comment."""
    header = "\n".join(line for line in path.read_text().splitlines() if line.startswith("#"))
    header = re.sub(r"\s*\n#\s*", " ", header)
    trials = re.search(r"(\d+) trials", header)
    hours = re.search(r"(\d+(?:\.\d+)?) A100 GPU-hours", header)
    assert trials and hours, f"{path.name}: no 'N trials' / 'N A100 GPU-hours' in the header"
    return int(trials.group(1)), float(hours.group(1))


def _table_rows(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[0].strip("`")] = cells[1:]
    return rows


def test_docs_cost_table_restates_the_sweep_estimates() -> None:
    rows = _table_rows(DOCS.read_text())
    per_gpu_hour = {
        "p4d": float(rows["AWS p4d.24xlarge"][2]),
        "a2": float(rows["GCP a2-highgpu-1g"][2]),
        "g5": float(rows["AWS g5.12xlarge"][2]),
    }
    # $ per GPU-hour is the hourly price over the GPU count.
    for instance, gpus in [("AWS p4d.24xlarge", 8), ("GCP a2-highgpu-4g", 4), ("AWS g5.12xlarge", 4)]:
        assert float(rows[instance][2]) == pytest.approx(float(rows[instance][1]) / gpus, abs=5e-3)
    sweeps = sorted((ROOT / "sweeps").glob("*.yaml"))
    costed = [p for p in sweeps if f"sweeps/{p.name}" in rows]
    assert {p.name for p in costed} >= {"full_benchmark.yaml", "lambda_sweep.yaml", "ablation_modality.yaml"}
    total_trials, total_hours = 0, 0.0
    for path in costed:
        trials, hours = _sweep_estimate(path)
        cells = rows[f"sweeps/{path.name}"]
        assert int(cells[0]) == trials and float(cells[1]) == hours, path.name
        expected = [hours * per_gpu_hour["p4d"], hours * per_gpu_hour["a2"], 2.5 * hours * per_gpu_hour["g5"]]
        assert [float(c.lstrip("$")) for c in cells[2:5]] == [round(x) for x in expected], path.name
        total_trials, total_hours = total_trials + trials, total_hours + hours
    total = rows["all three"]
    assert int(total[0]) == total_trials and float(total[1]) == total_hours
    expected = [total_hours * per_gpu_hour["p4d"], total_hours * per_gpu_hour["a2"],
                2.5 * total_hours * per_gpu_hour["g5"]]
    assert [float(c.lstrip("$")) for c in total[2:5]] == [round(x) for x in expected]
