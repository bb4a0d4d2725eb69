"""Generate a Tomcat-like /services tree: six services with conf/*.xml, WEB-INF/classes/*.properties,
lib/*.jar (most jars identical across services) and tomcat/logs with catalina.out and rotated logs."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

SERVICES = ("api", "console", "dispatcher", "km", "monitor", "worker")
SHIPPED_POLICY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf.d", "services.toml")
WORDS = """server connector port thread pool jdbc url user timeout cache session valve realm host engine context
resource factory driver enstratius provisioning analytics console credentials dispatcher monitor worker km
region datacenter account billing role group key value true false""".split()  # noqa: SIM905


@dataclass(frozen=True)
class Profile:
    name: str
    shared_jars: int       # identical in every service
    own_jars: int          # per service
    jar_kb: int            # average jar size
    small_files: int       # per service: xml, properties, classes
    small_bytes: int       # average small-file size
    log_mb: int            # per service


PROFILES = {
    "small": Profile("small", shared_jars=20, own_jars=5, jar_kb=256, small_files=800, small_bytes=2500, log_mb=2),
    "large": Profile("large", shared_jars=70, own_jars=30, jar_kb=1200, small_files=16500, small_bytes=3000,
                     log_mb=20),
}


def _text_corpus(rng: random.Random, size: int) -> bytes:
    lines = []
    total = 0
    while total < size:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))
        line = f"{rng.choice(WORDS)}.{rng.choice(WORDS)}={line}\n"
        lines.append(line)
        total += len(line)
    return "".join(lines).encode()


def generate(root: str, profile: Profile, seed: int = 1) -> int:
    """Create the tree under root; returns the number of files written."""
    rng = random.Random(seed)
    corpus = _text_corpus(rng, 4 * 1024 * 1024)
    shared = [rng.randbytes(max(1024, int(rng.gauss(profile.jar_kb, profile.jar_kb / 3)) * 1024))
              for _ in range(profile.shared_jars)]
    count = 0

    def write(path: str, data: bytes) -> None:
        nonlocal count
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(data)
        count += 1

    for service in SERVICES:
        tomcat = os.path.join(root, service, "tomcat")
        for number, jar in enumerate(shared):
            write(os.path.join(tomcat, "lib", f"common-{number}.jar"), jar)
        for number in range(profile.own_jars):
            size = max(1024, int(rng.gauss(profile.jar_kb, profile.jar_kb / 3)) * 1024)
            write(os.path.join(tomcat, "webapps", "ROOT", "WEB-INF", "lib", f"{service}-{number}.jar"),
                  rng.randbytes(size))
        for number in range(profile.small_files):
            size = max(64, int(rng.expovariate(1 / profile.small_bytes)))
            start = rng.randrange(0, len(corpus) - size)
            kind = number % 10
            if kind == 0:
                path = os.path.join(tomcat, "conf", f"d{number % 7}", f"context-{number}.xml")
                data = b"<Context>\n" + corpus[start:start + size] + b"</Context>\n"
            elif kind < 4:
                path = os.path.join(tomcat, "webapps", "ROOT", "WEB-INF", "classes", f"p{number % 50}",
                                    f"app-{number}.properties")
                data = corpus[start:start + size]
            else:
                path = os.path.join(tomcat, "webapps", "ROOT", "WEB-INF", "classes", "com", "enstratius",
                                    f"m{number % 200}", f"C{number}.class")
                data = b"\xca\xfe\xba\xbe" + bytes(b ^ 0x5A for b in corpus[start:start + size])
            write(path, data)
        log = _text_corpus(rng, 256 * 1024)
        write(os.path.join(tomcat, "logs", "catalina.out"), log * (profile.log_mb * 4))
        for day in range(1, 8):
            write(os.path.join(tomcat, "logs", f"catalina.2026-11-0{day}.log"), log * 2)
            write(os.path.join(tomcat, "logs", f"localhost_access_log.2026-11-0{day}.txt"), log)
        write(os.path.join(tomcat, "conf", "server.xml"), b'<Server port="8005"/>\n')
    return count


def all_files(root: str):
    for directory, dirs, files in os.walk(root):
        dirs.sort()
        if os.path.basename(directory) == "logs":
            continue
        for name in sorted(files):
            yield os.path.join(directory, name)


def shipped_exclude() -> str:
    """The shipped Tomcat excludes (conf.d/services.toml: the same for every service), as a TOML array, so
    that the benchmarks back up what a node does."""
    import json
    import sys

    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    with open(SHIPPED_POLICY, "rb") as handle:
        jobs = tomllib.load(handle)["jobs"]
    [exclude] = {tuple(job["exclude"]) for job in jobs.values()}
    return json.dumps(list(exclude))
