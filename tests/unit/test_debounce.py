from agent.snapshot.changes import ChangeSet
from agent.watch.debounce import Debouncer


def changes(*paths: str) -> ChangeSet:
    return ChangeSet(frozenset(paths))


def test_fires_after_quiet_with_all_paths_of_the_burst():
    d = Debouncer()
    d.configure("api", quiet=30, max_delay=600)
    for second in range(0, 60, 5):  # a deployment writing for a minute
        d.add("api", changes(f"/services/api/f{second}"), now=1000 + second)
    assert d.take_ready(now=1000 + 55 + 29) == []
    [(job, merged)] = d.take_ready(now=1000 + 55 + 30)
    assert job == "api" and len(merged.paths) == 12
    assert d.take_ready(now=5000) == []


def test_max_delay_caps_a_burst_that_never_settles():
    d = Debouncer()
    d.configure("api", quiet=30, max_delay=600)
    fired = []
    for second in range(0, 1300, 10):
        d.add("api", changes(f"/f{second}"), now=second)
        fired += [second for _ in d.take_ready(now=second)]
    assert fired == [600, 1210]


def test_busy_job_keeps_its_events_for_exactly_one_follow_up():
    d = Debouncer()
    d.configure("api", quiet=1, max_delay=10)
    d.add("api", changes("/a"), now=0)
    assert d.take_ready(now=5, busy=frozenset({"api"})) == []
    d.add("api", changes("/b"), now=6)
    [(job, merged)] = d.take_ready(now=8)
    assert merged.paths == {"/a", "/b"} and d.take_ready(now=100) == []
