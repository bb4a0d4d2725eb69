"""`check-config`: validate the configuration and list its jobs."""

from __future__ import annotations

import argparse

from agent.cli.common import EXIT_OK, UsageError, load_config, print_json, warning
from agent.text import plural


def check_encryption(config) -> None:
    """An unencrypted repository on object storage is refused unless [encryption] disabled = true says so
    (UsageError); a local one is a warning. A repository made before encryption existed stays as it is."""
    settings = config.encryption
    if settings.recipients or settings.disabled:
        return
    if config.repository.startswith("s3:"):
        raise UsageError(f"{config.path}: encryption: the repository {config.repository} is object storage and "
                         "would be stored unencrypted: set [encryption] recipients (see `backup-agent key generate`),"
                         " or disabled = true to store it unencrypted knowingly")
    if not config.repository.startswith("s3:"):
        warning(f"{config.path}: encryption: the repository {config.repository} is not encrypted: whoever reads "
                "its disk reads every backup (set [encryption] recipients)")


def check_config(config, as_json: bool = False) -> int:
    for text in config.advice:  # the other warnings were said as the configuration was loaded
        warning(text)
    check_encryption(config)
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
