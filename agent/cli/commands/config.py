"""`check-config`: validate the configuration and list its jobs."""

from __future__ import annotations

import argparse

from agent.cli.common import EXIT_OK, load_config, print_json
from agent.text import plural


def check_config(config, as_json: bool = False) -> int:
    if as_json:
        print_json({"config": config.path, "host": config.host, "repository": config.repository,
                    "jobs": [{"name": job.name, "type": job.type, "target": job.target,
                              "schedule": job.schedule, "every": job.every.text, "file": job.source}
                             for job in config.jobs]})
        return EXIT_OK
    print(f"{config.path}: ok, {plural(len(config.jobs), 'job')}, host {config.host}, repository {config.repository}")
    width = max((len(job.name) for job in config.jobs), default=4)
    for job in config.jobs:
        print(f"  {job.name:<{width}}  {job.type:<7}  {job.target}  ({job.schedule})")
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    return check_config(load_config(args.config), args.json)
