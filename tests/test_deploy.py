"""The Dockerfile and the Kubernetes manifests, checked without a Docker engine or a cluster.

The image is checked by building its file tree as the Dockerfile's COPY lines and .dockerignore
would, then running the server from that tree with only the runtime dependencies (the dev and
bench extras are blocked) and probing it with the HEALTHCHECK command. The manifests must parse,
and every port, probe, image, Secret, ConfigMap and file they name must exist and agree with the
Dockerfile and the server; `kubectl kustomize` renders them when kubectl is installed."""
from __future__ import annotations

import asyncio
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import ROOT, free_port, running_registry
from server import app, auth, config

KUBE = ROOT / "deploy" / "kubernetes"
BASE = KUBE / "base"
DEV_ONLY_MODULES = ("cryptography", "pytest", "grpc_tools", "matplotlib", "psutil")
OWN_PACKAGES = {"service-registry", "neural-hive-integration"}


# -- Dockerfile -------------------------------------------------------------------------------
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions, current = [], ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue
        current += " " + stripped.rstrip("\\").strip() if current else stripped.rstrip("\\")
        if not stripped.endswith("\\"):
            keyword, _, rest = current.strip().partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
            current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    return instructions


def arguments(text: str) -> list[str]:
    """An instruction's arguments: exec form (JSON array) or shell words."""
    return json.loads(text) if text.startswith("[") else shlex.split(text)


def env_of(instructions) -> dict[str, str]:
    env = {}
    for keyword, rest in instructions:
        if keyword == "ENV":
            for word in shlex.split(rest):
                key, _, value = word.partition("=")
                env[key] = value
    return env


def last(instructions, keyword: str) -> str:
    found = [rest for k, rest in instructions if k == keyword]
    assert found, f"no {keyword} in the Dockerfile"
    return found[-1]


def exposed_ports() -> set[int]:
    return {int(word.split("/")[0]) for k, rest in dockerfile() if k == "EXPOSE"
            for word in rest.split()}


def image_uid() -> int:
    user = last(dockerfile(), "USER").split(":")[0]
    assert user.isdigit(), "USER should be numeric so Kubernetes can verify runAsNonRoot"
    return int(user)


def test_dockerfile_base_user_ports_and_entrypoint():
    instructions = dockerfile()
    assert [rest for k, rest in instructions if k == "FROM"] == ["python:3.11-slim"]
    keywords = [k for k, _ in instructions]
    # Unprivileged, from the USER line on, which comes before the server starts.
    assert image_uid() != 0
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k == "RUN")
    defaults = config.Settings()
    assert exposed_ports() == {defaults.port, defaults.metrics_port} == {50051, 9464}
    env = env_of(instructions)
    assert env["SERVICE_REGISTRY_HOST"] == "0.0.0.0"
    assert int(env.get("SERVICE_REGISTRY_PORT", defaults.port)) == 50051
    assert int(env.get("METRICS_PORT", defaults.metrics_port)) == 9464
    config.load(environ={k: v for k, v in env.items()
                         if k in config.ENVIRONMENT.values()})  # valid settings
    command = arguments(last(instructions, "ENTRYPOINT")) + arguments(last(instructions, "CMD"))
    assert command == ["service-registry", "serve"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["service-registry"] == "cli.main:main"


def test_dockerfile_healthcheck_uses_the_grpc_health_service():
    check = last(dockerfile(), "HEALTHCHECK")
    options, _, command = check.partition("CMD")
    assert arguments(command.strip()) == ["python", "-m", "server.healthcheck"]
    timeout = re.search(r"--timeout=(\d+)s", options)
    assert timeout and int(timeout.group(1)) > 3  # the script's own call deadline is 3 s


def test_dockerfile_installs_as_make_install_does():
    runs = [rest for k, rest in dockerfile() if k == "RUN"]
    pip = [cmd.strip() for rest in runs for cmd in rest.split("&&") if "pip install" in cmd]
    assert pip == ["pip install -c constraints.txt -r /tmp/requirements.txt",
                   "pip install --no-deps -e ./client -e ."]
    make = re.search(r"pip install (.* -e .*)", (ROOT / "Makefile").read_text()).group(1)
    words = [w for w in shlex.split(make) if not w.startswith("--")]
    # Same packages, same editable mode; the image leaves the dev and bench extras out.
    assert [re.sub(r"\[.*\]$", "", w) for w in words] == ["-e", "./client", "-e", "."]
    # Editable: lua/ must sit next to the server package, where server/scripts.py looks.
    copied = {arguments(rest)[-1].rstrip("/") for k, rest in dockerfile() if k == "COPY"}
    assert {"server", "lua"} <= copied
    from server import scripts
    assert scripts.LUA_DIR == ROOT / "lua"


def runtime_requirements() -> list[str]:
    """The runtime dependencies the image's first layer installs (both pyproject files)."""
    names = []
    for path in (ROOT / "pyproject.toml", ROOT / "client" / "pyproject.toml"):
        names += tomllib.loads(path.read_text())["project"]["dependencies"]
    return [n for n in names if re.split(r"[\[<>=!~ ]", n)[0] not in OWN_PACKAGES]


def test_dependencies_are_installed_in_a_layer_before_the_source():
    instructions = dockerfile()
    keywords = [k for k, _ in instructions]
    deps = next(i for i, (k, rest) in enumerate(instructions)
                if k == "RUN" and "constraints.txt" in rest)
    # only packaging metadata is copied before it, so a code change keeps the layer
    before = [arguments(rest)[:-1] for k, rest in instructions[:deps] if k == "COPY"]
    assert sorted(src for srcs in before for src in srcs) == [
        "client/pyproject.toml", "constraints.txt", "pyproject.toml"]
    sources = [i for i, (k, rest) in enumerate(instructions)
               if k == "COPY" and arguments(rest)[0] in ("server/", "cli/", "lua/", "client/")]
    assert sources and min(sources) > deps
    assert keywords.count("FROM") == 1
    # the first layer's requirement list is what the pyproject files name
    code = re.search(r'python -c "(.+?)" > /tmp/requirements.txt', instructions[deps][1])[1]
    listed = subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    assert listed == [r.replace(" ", "") for r in runtime_requirements()]


def pinned() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, eq, version = line.partition("==")
            assert eq and version, f"constraints.txt: {line!r} is not pinned with =="
            pins[canonical(name)] = version
    return pins


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_constraints_pin_every_runtime_dependency_at_the_tested_version():
    from importlib import metadata

    from packaging.requirements import Requirement

    pins = pinned()
    assert not OWN_PACKAGES & set(pins), "the project's own packages are not pinned"
    wanted = [Requirement(r) for r in runtime_requirements()]
    seen: set[str] = set()
    while wanted:  # and what they need in turn, with the extras asked for (redis[hiredis])
        requirement = wanted.pop()
        if (key := canonical(requirement.name)) in seen:
            continue
        seen.add(key)
        installed = metadata.version(requirement.name)
        assert key in pins, f"{key} is not pinned in constraints.txt (run `make constraints`)"
        assert pins[key] == installed, (f"constraints.txt pins {key}=={pins[key]}, the tests "
                                        f"run {installed} (run `make constraints`)")
        for dep in map(Requirement, metadata.requires(requirement.name) or []):
            extras = requirement.extras | {""}
            if dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in extras):
                wanted.append(dep)


def test_the_image_says_which_store_it_runs():
    env = env_of(dockerfile())
    assert "REDIS_URL" not in env  # the default: the embedded store ...
    settings = config.load(environ={k: v for k, v in env.items()
                                    if k in config.ENVIRONMENT.values()})
    assert app.Store(settings).describe().startswith("embedded, not persisted")  # ... its log
    readme = (ROOT / "README.md").read_text()
    docker = readme[readme.index("### Docker"):readme.index("### Kubernetes")]
    assert "embedded store" in docker and "store: embedded, not persisted" in docker


# -- .dockerignore and the image's file tree --------------------------------------------------
def ignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(relative: str, patterns) -> bool:
    parts = relative.split("/")
    for pattern in patterns:
        bare = pattern.removeprefix("**/")
        for i in range(len(parts)):
            prefix = "/".join(parts[: i + 1])
            if fnmatch.fnmatch(prefix, pattern) or (
                    pattern.startswith("**/") and fnmatch.fnmatch(parts[i], bare)):
                return True
    return False


def build_context(target: Path) -> Path:
    """The image's /app: what each COPY brings from the context minus .dockerignore."""
    patterns = ignore_patterns()
    for keyword, rest in dockerfile():
        if keyword != "COPY":
            continue
        *sources, dest = arguments(rest)
        for source in sources:
            src = ROOT / source.rstrip("/")
            assert src.exists(), f"COPY {source}: not in the repository"
            assert not ignored(source.rstrip("/"), patterns), f"COPY {source} is dockerignored"
            files = [src] if src.is_file() else [p for p in src.rglob("*") if p.is_file()]
            for path in files:
                relative = path.relative_to(ROOT).as_posix()
                if ignored(relative, patterns):
                    continue
                if src.is_dir():          # a directory's contents go into dest
                    into = target / dest / path.relative_to(src)
                elif dest.endswith("/") or dest in (".", "./"):
                    into = target / dest / src.name
                else:
                    into = target / dest
                into.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, into)
    return target


def test_dockerignore_keeps_local_state_out_of_the_image():
    patterns = ignore_patterns()
    for path in (".git", ".venv", "tests/test_auth.py", "server/__pycache__/app.cpython-311.pyc",
                 "service_registry.egg-info/PKG-INFO", "deploy/kubernetes/base/tokens.json",
                 "client/neural_hive_integration.egg-info/PKG-INFO", "certs/server.key"):
        assert ignored(path, patterns), path
    for path in ("server/app.py", "lua/register.lua", "lua/includes/agent.lua", "cli/main.py",
                 "client/pyproject.toml", "pyproject.toml", "benchmarks/cli.py"):
        assert not ignored(path, patterns), path


BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError(f"{{name}} is not installed in the image (dev/bench extra)")
sys.meta_path.insert(0, Block())
import server
assert server.__file__.startswith({tree!r}), server.__file__
"""


def image_command(tree: Path, *argv: str) -> list[str]:
    """Runs `argv` (a module and its arguments) from the image tree, dev-only modules blocked."""
    module, *rest = argv
    code = BLOCKER.format(blocked=set(DEV_ONLY_MODULES), tree=str(tree)) + (
        f"import runpy; sys.argv = {[module, *rest]!r}; "
        f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)")
    return [sys.executable, "-c", code]


async def test_the_image_tree_serves_and_passes_its_healthcheck(tmp_path, redis_proc):
    tree = build_context(tmp_path / "app")
    assert (tree / "lua" / "register.lua").is_file() and (tree / "server" / "app.py").is_file()
    assert not (tree / "tests").exists() and not (tree / ".venv").exists()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SERVICE_REGISTRY_", "TLS_", "TOKENS_", "HEALTHCHECK_"))}
    env.update(env_of(dockerfile()))
    port, metrics_port = free_port(), free_port()
    env.update(PYTHONPATH=str(tree), SERVICE_REGISTRY_PORT=str(port),
               METRICS_PORT=str(metrics_port), REDIS_URL=redis_proc.url)
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(image_command(tree, "cli.main", "serve"), cwd=tree, env=env,
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        from conftest import wait_serving
        await wait_serving(f"127.0.0.1:{port}", proc=server, log=str(log))
        # The HEALTHCHECK command, with the image's environment.
        check = await asyncio.create_subprocess_exec(
            *image_command(tree, "server.healthcheck"), cwd=tree, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        output, _ = await asyncio.wait_for(check.communicate(), 60)
        assert check.returncode == 0 and b"SERVING" in output, output
        # The other EXPOSEd port is the Prometheus endpoint.
        body = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                           timeout=10).read())
        assert b"service_registry_" in body
        server.terminate()
        assert await asyncio.to_thread(server.wait, 30) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert any("PLAINTEXT" in line["message"] for line in lines)  # 0.0.0.0 without TLS


# -- Kubernetes -------------------------------------------------------------------------------
def load(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def manifests() -> dict[str, dict]:
    docs = {}
    for name in load(BASE / "kustomization.yaml")[0]["resources"]:
        for doc in load(BASE / name):
            docs[doc["kind"]] = doc
    return docs


def env_file(path: Path) -> dict[str, str]:
    pairs = [line.split("=", 1) for line in path.read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    return dict(pairs)


def container() -> dict:
    (only,) = manifests()["Deployment"]["spec"]["template"]["spec"]["containers"]
    return only


def test_every_manifest_parses():
    files = sorted(KUBE.rglob("*.yaml"))
    assert {f.relative_to(KUBE).as_posix() for f in files} >= {
        "kustomization.yaml", "base/kustomization.yaml", "base/service.yaml",
        "base/deployment.yaml", "base/pdb.yaml", "tls/kustomization.yaml", "tls/tls.yaml"}
    for path in files:
        for doc in load(path):
            assert isinstance(doc, dict) and ("kind" in doc or "resources" in doc), path
    for path in KUBE.rglob("kustomization.yaml"):
        kustomization = load(path)[0]
        for entry in kustomization.get("resources", []) + [
                p["path"] for p in kustomization.get("patches", [])]:
            assert (path.parent / entry).exists(), f"{path}: {entry} does not exist"
    auth.parse_tokens((BASE / "tokens.json").read_text())


def test_service_is_the_seeds_plus_metrics():
    docs = manifests()
    service, pod = docs["Service"], docs["Deployment"]["spec"]["template"]
    assert service["metadata"] == {**service["metadata"], "name": "service-registry",
                                   "namespace": "neural-hive"}
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["grpc"] == {"port": 50051, "targetPort": 50051, "protocol": "TCP",
                             "name": "grpc"}
    assert ports["metrics"]["port"] == 9464
    container_ports = {p["containerPort"]: p["name"] for p in container()["ports"]}
    assert set(container_ports) == exposed_ports()
    for port in ports.values():  # every target is a port the container opens
        target = port["targetPort"]
        assert target in container_ports or target in container_ports.values(), target
    labels = pod["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert docs["Deployment"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() \
        <= labels.items()
    assert docs["PodDisruptionBudget"]["spec"]["minAvailable"] < \
        docs["Deployment"]["spec"]["replicas"]


def test_deployment_replicas_image_resources_and_security():
    deployment = manifests()["Deployment"]
    spec, pod = deployment["spec"], deployment["spec"]["template"]["spec"]
    assert deployment["metadata"]["namespace"] == "neural-hive"
    assert spec["replicas"] >= 2
    c = container()
    # The image the docs build (docker build -t service-registry:latest .), as kustomize sets it.
    (image,) = load(BASE / "kustomization.yaml")[0]["images"]
    assert c["image"].split(":")[0] == image["name"]
    assert f"{image['newName']}:{image['newTag']}" == "service-registry:latest"
    assert "docker build -t service-registry:latest" in (ROOT / "Dockerfile").read_text()
    assert c["args"] == ["serve"]  # after the image's ENTRYPOINT service-registry
    assert {"cpu", "memory"} <= set(c["resources"]["requests"])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == image_uid()


def test_probes_use_the_grpc_health_service():
    c = container()
    grpc_port = next(p["containerPort"] for p in c["ports"] if p["name"] == "grpc")
    readiness, liveness = c["readinessProbe"]["grpc"], c["livenessProbe"]["grpc"]
    assert readiness["port"] == liveness["port"] == grpc_port == 50051
    assert readiness.get("service", "") == ""           # Redis reachable and not draining
    assert liveness["service"] == app.LIVENESS_SERVICE  # the process runs


async def test_the_probed_health_services_exist(redis_proc):
    """What the kubelet asks for is answered SERVING by a running server."""
    async with running_registry("redis", redis_proc) as reg:
        stub = health_pb2_grpc.HealthStub(reg.channel)
        for probe in ("readinessProbe", "livenessProbe"):
            service = container()[probe]["grpc"].get("service", "")
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, probe
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Check(health_pb2.HealthCheckRequest(service="no-such-service"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_prometheus_annotations_point_at_the_metrics_port():
    pod = manifests()["Deployment"]["spec"]["template"]
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    env = {e["name"]: e for e in container()["env"]}
    metrics_port = int(annotations["prometheus.io/port"])
    assert metrics_port == int(env["METRICS_PORT"]["value"])
    assert metrics_port in {p["containerPort"] for p in container()["ports"]}


def test_configuration_comes_from_generated_secrets_and_configmaps():
    kustomization = load(BASE / "kustomization.yaml")[0]
    secrets = {g["name"]: g for g in kustomization["secretGenerator"]}
    configmaps = {g["name"]: g for g in kustomization["configMapGenerator"]}
    c = container()
    env = {e["name"]: e for e in c["env"]}
    # REDIS_URL from a Secret that holds that key.
    ref = env["REDIS_URL"]["valueFrom"]["secretKeyRef"]
    generator = secrets[ref["name"]]
    keys = {}
    for name in generator.get("envs", []):
        keys.update(env_file(BASE / name))
    assert ref["key"] in keys and keys[ref["key"]].startswith(("redis://", "rediss://"))
    # The ConfigMap holds settings the server knows, with valid values.
    for source in c["envFrom"]:
        generator = configmaps[source["configMapRef"]["name"]]
        for name in generator["envs"]:
            settings = env_file(BASE / name)
            assert set(settings) <= set(config.ENVIRONMENT.values()), settings
            config.load(environ=settings)
    # The tokens file: TOKENS_FILE is a file of the tokens Secret where its volume is mounted.
    path = Path(env["TOKENS_FILE"]["value"])
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in manifests()["Deployment"]["spec"]["template"]["spec"]
               ["volumes"]}
    secret = volumes[mounts[str(path.parent)]]["secret"]["secretName"]
    assert path.name in [Path(f).name for f in secrets[secret]["files"]]
    assert not any("subPath" in m for m in c["volumeMounts"])  # subPath mounts never update


def test_drain_fits_in_the_termination_grace_period():
    pod = manifests()["Deployment"]["spec"]["template"]["spec"]
    c = container()
    settings = env_file(BASE / "config.env")
    grace = float(settings.get("SHUTDOWN_GRACE", config.Settings().shutdown_grace))
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] >= \
        float(pre_stop[1]) + grace + app.DRAIN_REFUSE_MAX + 2
    # With a read-only root file system the drain's private socket needs a writable /tmp.
    if c["securityContext"].get("readOnlyRootFilesystem"):
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]]


def test_tls_overlay_probes_with_the_healthcheck_script():
    (patch,) = load(KUBE / "tls" / "tls.yaml")
    (c,) = patch["spec"]["template"]["spec"]["containers"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"] is None  # kubelet's grpc probes cannot speak TLS
        command = c[probe]["exec"]["command"]
        assert command[:3] == ["python", "-m", "server.healthcheck"]
    assert c["livenessProbe"]["exec"]["command"][3:] == ["--service", app.LIVENESS_SERVICE]
    env = {e["name"]: e["value"] for e in c["env"]}
    (mount,) = c["volumeMounts"]
    for name in ("TLS_CERT", "TLS_KEY", "HEALTHCHECK_CA"):
        assert env[name].startswith(mount["mountPath"] + "/")


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("directory", ["", "tls"])
def test_kubectl_kustomize_renders(directory):
    rendered = subprocess.run(["kubectl", "kustomize", str(KUBE / directory)],
                              capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    docs = {(d["kind"], d["metadata"]["name"].rsplit("-", 1)[0] if d["kind"] in
             ("Secret", "ConfigMap") else d["metadata"]["name"]): d
            for d in yaml.safe_load_all(rendered.stdout) if d}
    assert all(d["metadata"]["namespace"] == "neural-hive" for d in docs.values())
    deployment = docs[("Deployment", "service-registry")]
    pod = deployment["spec"]["template"]["spec"]
    names = {d["metadata"]["name"] for d in docs.values()}
    # Generated names (with their hash suffix) are what the Deployment refers to.
    (c,) = pod["containers"]
    refs = [e["valueFrom"]["secretKeyRef"]["name"] for e in c["env"] if "valueFrom" in e]
    refs += [s["configMapRef"]["name"] for s in c["envFrom"]]
    refs += [v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v]
    assert set(refs) - {"service-registry-tls"} <= names
    assert c["image"] == "service-registry:latest"
    if directory == "tls":
        assert "grpc" not in c["readinessProbe"] and "exec" in c["readinessProbe"]
        assert {"TLS_CERT", "TLS_KEY"} <= {e["name"] for e in c["env"]}
    else:
        assert c["readinessProbe"]["grpc"]["port"] == 50051
