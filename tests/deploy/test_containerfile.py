"""The Containerfile, checked statically on every run (building it takes minutes: that is the opt-in
tests/deploy/test_container_image.py):
multi-stage, an exact base image, firejail and the sandbox user inside, a non-root account, a
HEALTHCHECK on /healthz at the port Veil serves on, the config file it ships accepted by Veil,
and a .dockerignore that sends only what the build copies."""

from __future__ import annotations

import fnmatch
import re
import shlex
from pathlib import Path

import pytest
import yaml

from veil.config import SandboxConfig, parse_config

ROOT = Path(__file__).resolve().parents[2]


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical: list[str] = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    pairs = []
    for line in logical:
        word, _, rest = line.partition(" ")
        pairs.append((word.upper(), rest.strip()))
    return pairs


def stages(pairs: list[tuple[str, str]]) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    name = None
    for word, rest in pairs:
        if word == "FROM":
            name = rest.split(" AS ")[-1].strip() if " AS " in rest else rest
            out[name] = []
        elif name is not None:
            out[name].append((word, rest))
    return out


PAIRS = instructions((ROOT / "Containerfile").read_text())
STAGES = stages(PAIRS)
RUNTIME = STAGES["runtime"]


def json_array(rest: str) -> list[str]:
    return yaml.safe_load(rest)


@pytest.mark.req("deploy:container")
def test_multi_stage_from_an_exact_base_image() -> None:
    assert list(STAGES) == ["build", "runtime"]
    args = dict(rest.split("=", 1) for word, rest in PAIRS if word == "ARG" and "=" in rest)
    base = args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", base), base
    froms = [rest for word, rest in PAIRS if word == "FROM"]
    assert froms == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE} AS runtime"]
    # Only the built virtualenv crosses into the runtime stage: no compiler, no source tree, no wheels.
    copies = [rest for word, rest in RUNTIME if word == "COPY"]
    assert [c for c in copies if c.startswith("--from=")] == ["--from=build /opt/veil /opt/veil"]


@pytest.mark.req("deploy:container")
def test_firejail_the_sandbox_user_and_a_non_root_account_are_inside() -> None:
    runs = " ".join(rest for word, rest in RUNTIME if word == "RUN")
    installed = re.search(r"apt-get install -y --no-install-recommends ([^&]+)", runs)
    assert installed is not None
    packages = set(installed.group(1).split())
    # firejail (the jail), mkfs.ext4 and mount (each workspace is its own filesystem), tini (PID 1).
    assert {"firejail", "e2fsprogs", "mount", "tini"} <= packages
    assert "rm -rf /var/lib/apt/lists/*" in runs
    assert f"python -m veil.sandbox.setup --user {SandboxConfig().user}" in runs
    uid = re.search(r"useradd --system --uid (\d+)", runs)
    assert uid is not None and int(uid.group(1)) >= 10000
    # The migration Job runs as that account (deploy/kubernetes/migrate-job.yaml).
    job = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "migrate-job.yaml").read_text())
    assert job["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(uid.group(1))
    # The data directory (workspaces live in it) must let the sandbox user reach its own workspace.
    assert "install -d -m 0711 -o root -g root /srv/veil" in runs
    entrypoint = json_array(next(rest for word, rest in RUNTIME if word == "ENTRYPOINT"))
    assert entrypoint[:2] == ["tini", "--"]
    # Without a `container` value firejail knows, firejail in a PID namespace runs the code with no
    # sandbox at all (Veil then refuses): seen running the image (tests/deploy/test_container_image.py).
    env = " ".join(rest for word, rest in RUNTIME if word == "ENV").split()
    assert "container=docker" in env


@pytest.mark.req("deploy:container")
def test_healthcheck_hits_healthz_where_veil_serves_and_config_comes_from_file_and_environment() -> None:
    cmd = json_array(next(rest for word, rest in RUNTIME if word == "CMD"))
    assert cmd[:3] == ["serve", "--config", "/etc/veil/veil.yaml"]
    port = cmd[cmd.index("--http") + 1].rsplit(":", 1)[1]
    assert [rest for word, rest in RUNTIME if word == "EXPOSE"] == [port]
    health = next(rest for word, rest in RUNTIME if word == "HEALTHCHECK")
    assert "--start-period=" in health
    assert f"http://127.0.0.1:{port}/healthz" in health
    check = json_array(health.split(" CMD ", 1)[1])
    assert check[0] == "python" and "urlopen" in check[-1]  # non-2xx raises: the check fails
    # The shipped default config: accepted by Veil, no secrets, data_dir where firejail can mount.
    copied = [rest for word, rest in RUNTIME if word == "COPY" and rest.endswith("/etc/veil/veil.yaml")]
    assert copied == ["deploy/container/veil.yaml /etc/veil/veil.yaml"]
    raw = yaml.safe_load((ROOT / "deploy" / "container" / "veil.yaml").read_text())
    assert "database_url" not in raw
    config = parse_config(raw, source=Path("/etc/veil/veil.yaml"))
    assert str(config.data_dir) == "/srv/veil" and not str(config.data_dir).startswith("/var/")


@pytest.mark.req("deploy:container")
def test_dockerignore_sends_exactly_what_the_build_copies() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "exclude everything, then re-include what the build copies"
    included = [p[1:].rstrip("/") for p in patterns if p.startswith("!")]
    sources = []
    for stage in STAGES.values():
        for word, rest in stage:
            if word == "COPY" and not rest.startswith("--from="):
                sources += shlex.split(rest)[:-1]
    assert sources, "the Containerfile copies nothing from the build context"
    for source in sources:
        source = source.rstrip("/").removeprefix("./")
        assert (ROOT / source).exists(), source
        assert any(source == inc or source.startswith(inc + "/") for inc in included), source
    # What pyproject.toml maps into the wheel (package-dir) is all copied into the build stage.
    pyproject = (ROOT / "pyproject.toml").read_text()
    mapped = set(re.findall(r'^"veil\._data\.[a-z_.]+" = "([a-z_]+)', pyproject, re.M))
    assert mapped and mapped <= {s.rstrip("/").removeprefix("./") for s in sources}
    assert not any(fnmatch.fnmatch(".venv", inc) or fnmatch.fnmatch(".git", inc) for inc in included)
