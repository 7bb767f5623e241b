"""common/transport/group_commit.py: what arrives while a commit runs is committed together, the next
batch starts without the socket thread, failures come back instead of acks, close drains."""
import threading


from common.transport.group_commit import GroupCommitter
from tests.waiting import wait_until


def _item(name: str, nbytes: int = 10) -> tuple:
    return (b"peer", name.encode(), name, memoryview(bytes(nbytes)))


class _GatedCommit:
    """Records every batch; the first call waits until released."""

    def __init__(self):
        self.batches: list[list[str]] = []
        self.release = threading.Event()

    def __call__(self, items):
        self.batches.append([traj for traj, _ in items])
        if len(self.batches) == 1:
            assert self.release.wait(10)
        return ["stored"] * len(items)


def test_messages_that_arrive_during_a_commit_share_the_next_one():
    commit, wakes = _GatedCommit(), []
    committer = GroupCommitter(commit, lambda: wakes.append(1), max_batch=8,
                               max_batch_bytes=1 << 20)
    committer.add([_item("a")])
    wait_until(lambda: len(commit.batches) == 1)       # "a" is being committed
    committer.add([_item("b")])
    committer.add([_item("c"), _item("d")])
    assert committer.room() == (5, (1 << 20) - 30)
    commit.release.set()
    wait_until(lambda: len(committer.done) == 2)
    assert commit.batches == [["a"], ["b", "c", "d"]]
    assert [len(batch) for batch, _ in committer.done] == [1, 3]
    assert committer.done[1][1] == ["stored"] * 3 and len(wakes) == 2
    committer.close()


def test_a_failed_commit_is_handed_back_and_the_worker_goes_on():
    calls = []

    def commit(items):
        calls.append(len(items))
        if len(calls) == 1:
            raise OSError("disk full")
        return ["stored"] * len(items)

    committer = GroupCommitter(commit, lambda: None, max_batch=8, max_batch_bytes=1 << 20)
    committer.add([_item("a")])
    wait_until(lambda: len(committer.done) == 1)
    committer.add([_item("b")])
    wait_until(lambda: len(committer.done) == 2)
    (_, first), (_, second) = committer.done
    assert isinstance(first, OSError) and second == ["stored"]
    committer.close()


def test_close_commits_what_is_waiting():
    commit = _GatedCommit()
    committer = GroupCommitter(commit, lambda: None, max_batch=8, max_batch_bytes=1 << 20)
    committer.add([_item("a")])
    wait_until(lambda: len(commit.batches) == 1)
    committer.add([_item("b"), _item("c")])
    closer = threading.Thread(target=committer.close)
    closer.start()
    commit.release.set()
    closer.join(10)
    assert not closer.is_alive()
    assert commit.batches == [["a"], ["b", "c"]] and len(committer.done) == 2
