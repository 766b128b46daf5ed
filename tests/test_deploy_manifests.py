"""deploy/: every manifest passes ``kubernetes-validate --strict`` (Kubernetes 1.30 and the
newest bundled schema, offline), the ClusterRole is exactly ipam_daemon.kube.rbac's rules,
the ConfigMap loads through the agent's and the installer's own parsers, the DaemonSet has
the shape the install issue asks for (its command lines parse with our CLIs), and the IAM
policy grants exactly the EC2 actions cloud/ec2.py calls, mutations only on tagged ENIs."""
from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from cloud.types import TAG_CLUSTER
from cni.conflist import ConflistOptions, render_conflist
from ipam_daemon.config import parse_config
from ipam_daemon.installer import build_parser, check_conflist
from ipam_daemon.kube import rbac
from ipam_daemon.version import VERSION

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
VALIDATE = str(Path(sys.executable).with_name("kubernetes-validate"))
RESOURCE_FILES = sorted(p for p in DEPLOY.rglob("*.yaml") if p.name != "kustomization.yaml")
VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]  # the newest bundled
NODE_IP = "10.0.0.10"


def load(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


def run_validate(version: str, *files: Path) -> subprocess.CompletedProcess:
    return subprocess.run([VALIDATE, "--strict", "-k", version, *map(str, files)],
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_validates_strictly(version):
    assert len(RESOURCE_FILES) >= 7, RESOURCE_FILES
    proc = run_validate(version, *RESOURCE_FILES)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    passed = [line for line in proc.stdout.splitlines() if " passed for resource " in line]
    assert len(passed) == len(RESOURCE_FILES), proc.stdout


def test_the_strict_validation_rejects_an_unknown_field(tmp_path):
    bad = tmp_path / "daemonset.yaml"
    bad.write_text((DEPLOY / "daemonset.yaml").read_text().replace(
        "hostNetwork: true", "hostNetwork: true\n      hostNetwrk: true", 1))
    proc = run_validate(VERSIONS[0], bad)
    assert proc.returncode != 0 and "'hostNetwrk' was unexpected" in proc.stdout + proc.stderr


def test_kustomization_lists_every_resource_and_renders():
    for kustomization in (DEPLOY / "kustomization.yaml", DEPLOY / "uninstall/kustomization.yaml"):
        data = yaml.safe_load(kustomization.read_text())
        here = kustomization.parent
        listed = {here / r for r in data["resources"]}
        present = {p for p in here.glob("*.yaml")
                   if p.name != "kustomization.yaml" and not p.name.endswith(".template.yaml")}
        assert listed == present, (kustomization, listed ^ present)
        assert data["namespace"] == "kube-system"
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl (with kustomize) is not installed: rendering not checked")
    proc = subprocess.run(["kubectl", "kustomize", str(DEPLOY)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    gone = subprocess.run(["kubectl", "kustomize", str(DEPLOY / "uninstall")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert gone.returncode == 0, gone.stderr
    images = {c["image"] for d in docs + list(yaml.safe_load_all(gone.stdout)) if d
              and d["kind"] == "DaemonSet" for c in d["spec"]["template"]["spec"]["containers"]}
    assert images == {f"underlay:{VERSION}"}  # install and uninstall: the same image
    assert {d["kind"] for d in docs} == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                                         "Role", "RoleBinding", "ConfigMap", "DaemonSet"}
    for doc in docs:
        if doc["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert doc["metadata"]["namespace"] == "kube-system", doc["metadata"]


def test_the_roles_are_exactly_the_agents_rules():
    """The ClusterRole and the kube-system Role together grant what the agent uses; the
    ConfigMaps it reads only in kube-system are not granted cluster-wide."""
    cluster, role = load("clusterrole.yaml"), load("role.yaml")
    granted = {(group, resource, verb) for rule in cluster["rules"] + role["rules"]
               for group in rule["apiGroups"] for resource in rule["resources"]
               for verb in rule["verbs"]}
    used = rbac.permission_set()
    assert granted - used == set(), f"granted but never used: {sorted(granted - used)}"
    assert used - granted == set(), f"used but not granted: {sorted(used - granted)}"
    assert cluster["rules"] == rbac.cluster_role_rules()
    assert role["rules"] == rbac.role_rules()
    assert not any("configmaps" in rule["resources"] for rule in cluster["rules"])
    account = load("serviceaccount.yaml")
    subject = [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                "namespace": account["metadata"]["namespace"]}]
    for binding, granted_role in ((load("clusterrolebinding.yaml"), cluster),
                                  (load("rolebinding.yaml"), role)):
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                      "kind": granted_role["kind"],
                                      "name": granted_role["metadata"]["name"]}
        assert binding["subjects"] == subject


def agent_env() -> dict[str, str]:
    """The environment the DaemonSet gives the agent, with the downward API's node name."""
    agent = _containers(load("daemonset.yaml")["spec"]["template"]["spec"])["agent"]
    env = {}
    for item in agent.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        elif item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "spec.nodeName":
            env[item["name"]] = "node-a"
        elif item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "status.podIP":
            env[item["name"]] = NODE_IP  # a hostNetwork pod's IP is the node's
    return env


def test_configmap_loads_through_the_agent_and_the_installer():
    data = load("configmap.yaml")["data"]
    config = parse_config(json.loads(data["agent.json"]), env=agent_env())
    assert config.datapath == "veth" and config.status_address == "127.0.0.1"
    assert (config.metrics_address, config.metrics_port) == (NODE_IP, 61678)
    assert config.kubernetes == "in-cluster" and config.node_name == "node-a"
    conflist = json.loads(data["05-underlay.conflist"])
    assert conflist == render_conflist(ConflistOptions(socket=config.socket_path,
                                                       mtu=config.mtu))
    check_conflist(data["05-underlay.conflist"], "configmap.yaml")


def _containers(spec: dict) -> dict[str, dict]:
    return {c["name"]: c for c in spec.get("initContainers", []) + spec["containers"]}


def test_daemonset_shape():
    ds = load("daemonset.yaml")
    spec = ds["spec"]["template"]["spec"]
    config = parse_config(json.loads(load("configmap.yaml")["data"]["agent.json"]),
                          env=agent_env())
    assert ds["spec"]["updateStrategy"] == {"type": "RollingUpdate",
                                            "rollingUpdate": {"maxUnavailable": "10%"}}
    assert spec["hostNetwork"] is True and spec["priorityClassName"] == "system-node-critical"
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert spec["serviceAccountName"] == load("serviceaccount.yaml")["metadata"]["name"]
    containers = _containers(spec)
    assert [c["name"] for c in spec["initContainers"]] == ["host-sysctls", "install-plugin"]
    assert spec["enableServiceLinks"] is False  # no UNDERLAY_* variables from Services
    assert_resources_and_pull_policy(containers)
    assert "cpu" not in containers["agent"]["resources"]["limits"]  # a throttled agent stalls pods
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    expressions = {e["key"]: (e["operator"], e["values"])
                   for e in terms["nodeSelectorTerms"][0]["matchExpressions"]}
    assert len(terms["nodeSelectorTerms"]) == 1  # terms are ORed: one term, all of these
    assert expressions == {"kubernetes.io/os": ("In", ["linux"]),
                           "kubernetes.io/arch": ("In", ["amd64", "arm64"]),
                           "eks.amazonaws.com/compute-type": ("NotIn", ["fargate"]),
                           "type": ("NotIn", ["virtual-kubelet"])}

    agent = containers["agent"]
    sc = agent["securityContext"]
    assert sc["privileged"] is False
    assert set(sc["capabilities"]["add"]) == {"NET_ADMIN", "NET_RAW", "SYS_ADMIN"}
    assert sc["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m for m in agent["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    host = {path: volumes[m["name"]].get("hostPath", {}).get("path") for path, m in mounts.items()}
    assert host["/run/underlay"] == "/run/underlay"
    assert host["/var/lib/underlay"] == "/var/lib/underlay"
    assert host["/var/run/netns"] == "/var/run/netns"
    assert mounts["/var/run/netns"]["mountPropagation"] == "HostToContainer"
    assert host["/run/xtables.lock"] == "/run/xtables.lock"
    assert config.socket_path.startswith("/run/underlay/")
    assert config.state_path.startswith("/var/lib/underlay/")
    # the probes and the scrape annotation follow the metrics port of agent.json
    ports = {p["name"]: p for p in agent["ports"]}
    assert ports["metrics"]["containerPort"] == config.metrics_port
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert agent[probe]["httpGet"] == {"path": path, "port": "metrics"}, agent[probe]
    annotations = ds["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(config.metrics_port)
    assert annotations["prometheus.io/scrape"] == "true"
    env = {e["name"]: e for e in agent["env"]}
    assert env["UNDERLAY_METRICS_ADDRESS"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    creds = env["AWS_SHARED_CREDENTIALS_FILE"]["value"]
    assert volumes[mounts[str(Path(creds).parent)]["name"]]["secret"]["optional"] is True
    assert mounts[str(Path(creds).parent)]["readOnly"] is True
    assert env["UNDERLAY_NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"

    # the installer command lines are valid for our CLI and point at mounted host dirs
    for name in ("install-plugin", "conflist"):
        command = containers[name]["command"]
        assert command[0] == "underlay-install"
        args = build_parser().parse_args(command[1:])
        mounted = {m["mountPath"] for m in containers[name]["volumeMounts"]}
        assert args.host_root == "/host"
        if args.skip_conflist:
            assert "/host/opt/cni/bin" in mounted
        else:
            assert args.conflist_only and args.stay and args.agent_socket == config.socket_path
            assert "/host/etc/cni/net.d" in mounted and "/run/underlay" in mounted
            assert str(Path(args.conflist_template).parent) in mounted
        assert "/host/var/lib/underlay" in mounted  # the manifest of what was installed
    scripts = (REPO / "pyproject.toml").read_text()
    for command in ("underlay-install", "underlay-agent"):
        assert f'\n{command} = "' in scripts


def assert_resources_and_pull_policy(containers: dict[str, dict]) -> None:
    for c in containers.values():
        assert c["imagePullPolicy"] == "IfNotPresent", c["name"]
        assert set(c["resources"]["requests"]) == {"cpu", "memory"}, c["name"]
        assert "memory" in c["resources"]["limits"], c["name"]


def test_uninstall_daemonset_shape():
    ds = load("uninstall/daemonset.yaml")
    spec = ds["spec"]["template"]["spec"]
    containers = _containers(spec)
    assert_resources_and_pull_policy(containers)
    uninstall = containers["uninstall"]
    args = build_parser().parse_args(uninstall["command"][1:])
    assert args.command == "uninstall" and args.host_root == "/host" and not args.force
    mounted = {m["mountPath"] for m in uninstall["volumeMounts"]}
    assert {"/host/opt/cni/bin", "/host/etc/cni/net.d", "/host/var/lib/underlay",
            "/run/xtables.lock", str(Path(args.agent_socket).parent)} <= mounted
    assert spec["hostNetwork"] is True and uninstall["securityContext"]["privileged"] is True
    install = load("daemonset.yaml")["spec"]["template"]["spec"]["affinity"]
    assert spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"][0]["matchExpressions"][0] == install["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0][
        "matchExpressions"][0]


def test_one_image_for_install_and_uninstall_tagged_with_the_version():
    """The README's image step edits deploy/image only; both kustomizations include it and
    its tag is the release (pyproject's version, which the running code reports)."""
    component = yaml.safe_load((DEPLOY / "image/kustomization.yaml").read_text())
    assert component["kind"] == "Component"
    assert component["images"][0]["newTag"] == VERSION
    for kustomization, ref in (("kustomization.yaml", "image"),
                               ("uninstall/kustomization.yaml", "../image")):
        data = yaml.safe_load((DEPLOY / kustomization).read_text())
        assert data["components"] == [ref] and "images" not in data, kustomization
    readme = (REPO / "README.md").read_text()
    assert "deploy/image/kustomization.yaml" in readme
    assert f"underlay:{VERSION}" in readme


def _adapter_actions() -> set[str]:
    """Every EC2 action name the adapter (cloud/ec2.py and the cloud/ec2_*.py modules it is
    made of) passes to its call helpers."""
    trees = [ast.parse(path.read_text()) for path in sorted((REPO / "cloud").glob("ec2*.py"))]
    actions = set()
    for node in (node for tree in trees for node in ast.walk(tree)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in ("_call", "_paginate", "_route") and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant):
                actions.add(first.value)
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "action"
                                                for t in node.targets):
            if isinstance(node.value, ast.Constant):
                actions.add(node.value.value)
    return actions


def test_iam_policy_grants_exactly_the_adapters_actions():
    policy = json.loads((DEPLOY / "iam-policy.json").read_text())
    cluster = json.loads(load("configmap.yaml")["data"]["agent.json"])["cluster"]
    statements = policy["Statement"]
    granted = set()
    for s in statements:
        assert s["Effect"] == "Allow"
        acts = [s["Action"]] if isinstance(s["Action"], str) else s["Action"]
        granted |= {a.removeprefix("ec2:") for a in acts}
    used = _adapter_actions()
    assert "TagSpecifications" in (REPO / "cloud" / "ec2.py").read_text()
    assert len(used) >= 14, used
    # CreateTags: tagging inside CreateNetworkInterface (TagSpecifications) needs it
    assert granted == used | {"CreateTags"}, (sorted(granted - used), sorted(used - granted))

    for s in statements:
        acts = [s["Action"]] if isinstance(s["Action"], str) else s["Action"]
        resources = [s["Resource"]] if isinstance(s["Resource"], str) else s["Resource"]
        mutating = [a for a in acts if not a.startswith("ec2:Describe")]
        if not mutating:
            continue
        assert resources != ["*"], s["Sid"]
        tagged = any(":network-interface/" in r or ":route-table/" in r for r in resources)
        cond = s.get("Condition", {}).get("StringEquals", {})
        if tagged:  # our ENIs and route tables: only with our cluster's tag
            keys = {f"aws:ResourceTag/{TAG_CLUSTER}", f"aws:RequestTag/{TAG_CLUSTER}"}
            assert any(cond.get(k) == cluster for k in keys), s["Sid"]
        else:  # the other side of an attach or a create: instances, subnets, groups
            assert all(r.split(":")[-1].split("/")[0] in ("instance", "subnet", "security-group")
                       for r in resources), s["Sid"]
    creates = [s for s in statements if "CreateNetworkInterface" in str(s["Action"])
               and any(":network-interface/" in r for r in [s["Resource"]])]
    assert creates and all(f"aws:RequestTag/{TAG_CLUSTER}" in s["Condition"]["StringEquals"]
                           for s in creates)


def test_dockerfile_copies_what_exists():
    text = (DEPLOY / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in text and "iproute2 iptables" in text
    assert "-c requirements.lock" in text and "cni/shim/build.sh" in text
    for line in text.splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            for src in line.split()[1:-1]:
                assert (REPO / src).exists(), src
