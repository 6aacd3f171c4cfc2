import threading
import time

import pytest

from pyro_vae.training.writer import BackgroundWriter


def test_writes_run_in_order_on_a_thread_of_their_own():
    done, threads = [], set()
    writer = BackgroundWriter()

    def write(item: int) -> None:
        time.sleep(0.002 * (5 - item))  # later items are quicker: order is not by speed
        done.append(item)
        threads.add(threading.current_thread().name)

    for item in range(5):
        writer.submit(write, item)
    writer.close()
    assert done == [0, 1, 2, 3, 4]
    assert len(threads) == 1 and threading.current_thread().name not in threads


def test_a_failed_write_is_raised_in_the_caller_and_nothing_after_it_is_written():
    done, release = [], threading.Event()
    writer = BackgroundWriter()

    def fail() -> None:
        release.wait()
        raise OSError("disk full")

    writer.submit(fail)
    writer.submit(done.append, "after the failure")
    release.set()
    with pytest.raises(OSError, match="disk full"):
        writer.wait()
    writer.wait()  # raised once
    writer.submit(done.append, "later")
    writer.close()
    assert done == []


def test_a_failure_is_raised_by_the_next_submit_after_it():
    writer, deadline = BackgroundWriter(max_pending=10_000), time.monotonic() + 10
    writer.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        while time.monotonic() < deadline:  # training goes on, submitting, until it is told
            writer.submit(time.sleep, 0.001)
    writer.close()


def test_submit_waits_while_too_many_writes_are_pending():
    release, started = threading.Event(), []
    writer = BackgroundWriter(max_pending=2)
    writer.submit(release.wait)
    writer.submit(started.append, 1)
    blocked = threading.Thread(target=writer.submit, args=(started.append, 2))
    blocked.start()
    blocked.join(timeout=0.2)
    assert blocked.is_alive()  # held back until the first write is done
    release.set()
    blocked.join(timeout=10)
    writer.close()
    assert started == [1, 2]
