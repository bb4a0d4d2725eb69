"""backup-agent: change-triggered, deduplicated, verifiable backups for Enstratius nodes."""

__version__ = "0.1.0"
