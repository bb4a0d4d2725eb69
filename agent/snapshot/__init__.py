"""Filesystem snapshots: walking a tree, the files cache, and the entry stream stored as a snapshot's tree."""
