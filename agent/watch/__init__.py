"""Watching trees: inotify watches that leave excluded directories out (inotify), each job's mode and its
degradation to polling (observer), and the debouncer that turns a burst of events into one backup."""
