"""`key generate --identity FILE` and `key recover-node --identity FILE --out FILE`: the operator's age
identity, and a node key recovered from an encrypted repository (README, "Encryption")."""

from __future__ import annotations

import argparse
import os

from agent.cli.common import EXIT_OK, UsageError, err, load_config


def run_generate(args: argparse.Namespace) -> int:
    from agent.crypt.keys import KeyFileError, generate_identity

    try:
        recipient = generate_identity(os.path.abspath(args.identity))
    except KeyFileError as exc:
        raise UsageError(str(exc)) from None
    err(f"wrote a new identity to {os.path.abspath(args.identity)} (mode 0600). Keep it off the nodes, and keep "
        "a copy: if every identity of a repository's recipients is lost, its backups cannot be restored by anyone.")
    err("put its recipient in [encryption] recipients of every node's agent.toml:")
    print(recipient)
    return EXIT_OK


def run_recover_node(args: argparse.Namespace) -> int:
    from agent.backend import BackendError
    from agent.crypt.bootstrap import recover_node_key
    from agent.crypt.keys import KeyFileError, load_identities, save_node_key
    from agent.runner import repository_backend

    config = load_config(args.config)
    identity = os.path.abspath(args.identity)
    try:
        backend = repository_backend(config)
        node = recover_node_key(backend, load_identities(identity), identity)
        save_node_key(os.path.abspath(args.out), node)
    except (KeyFileError, BackendError) as exc:
        raise UsageError(str(exc)) from None
    err(f"wrote the node key of {config.repository} to {os.path.abspath(args.out)} (mode 0600); a node whose "
        "[encryption] node_key_file names it backs up into the repository and deduplicates against it")
    return EXIT_OK
