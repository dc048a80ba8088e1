"""What `docker compose config` would catch beyond the schema, for machines without Docker.

    python docker/check_compose.py docker/compose.yaml

Resolves YAML anchors and merge keys and ``${VAR:-default}`` interpolation (a
``${VAR:?msg}`` without VAR set is an error, as in Compose), then checks that
every ``depends_on`` names a service, every named volume is declared, every
service has an image or a build, published ports do not clash, and every
``build.dockerfile`` exists. Prints the resolved services and exits 1 on a problem.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import yaml

VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(value, environ, problems):
    if isinstance(value, dict):
        return {k: interpolate(v, environ, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, environ, problems) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match):
        name, op, arg = match.group(1), match.group(2), match.group(3)
        current = environ.get(name)
        if op in (":-", "-"):
            return current if current not in (None, "") or (op == "-" and current is not None) else arg
        if op in (":?", "?") and not current:
            problems.append(f"${{{name}}} is required: {arg}")
            return ""
        return current or ""

    return VARIABLE.sub(substitute, value.replace("$$", "\0")).replace("\0", "$")


def check(path: Path, environ: dict[str, str]) -> list[str]:
    problems: list[str] = []
    config = interpolate(yaml.safe_load(path.read_text()), environ, problems)
    services = config.get("services") or {}
    volumes = set((config.get("volumes") or {}).keys())
    published: dict[str, str] = {}
    for name, service in services.items():
        if "image" not in service and "build" not in service:
            problems.append(f"service {name}: neither image nor build")
        build = service.get("build")
        if isinstance(build, dict):
            context = (path.parent / build.get("context", ".")).resolve()
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            if not dockerfile.is_file():
                problems.append(f"service {name}: build.dockerfile {dockerfile} does not exist")
        depends = service.get("depends_on") or {}
        for other in depends if isinstance(depends, (list, dict)) else []:
            if other not in services:
                problems.append(f"service {name}: depends_on names unknown service {other!r}")
        for mount in service.get("volumes") or []:
            source = mount.split(":")[0] if isinstance(mount, str) else mount.get("source", "")
            if source and not source.startswith((".", "/", "~")) and source not in volumes:
                problems.append(f"service {name}: volume {source!r} is not declared under volumes:")
        for port in service.get("ports") or []:
            host = str(port).split(":")[0] if ":" in str(port) else None
            if host and host in published:
                problems.append(f"services {published[host]} and {name} both publish host port {host}")
            elif host:
                published[host] = name
        print(f"{name}: image={service.get('image', '-')} command={service.get('command', '-')}")
    return problems


if __name__ == "__main__":
    problems = check(Path(sys.argv[1] if len(sys.argv) > 1 else "docker/compose.yaml"), dict(os.environ))
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    print("compose file ok" if not problems else f"{len(problems)} problem(s)")
    sys.exit(1 if problems else 0)
