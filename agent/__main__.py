"""Allows `python -m agent` as an alias of the `backup-agent` command."""

from agent.cli import main

raise SystemExit(main())
