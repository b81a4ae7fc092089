"""Sample the resident memory of a worker's processes while a test drives it (issue 11).

``RssSampler`` runs in a thread of the test process and, every ``interval`` seconds, records the
RSS of the worker's main process and of each of its pool children, noting which child has a given
file open — the one running the step that reads it. It touches no database: progress is matched
to the samples by time afterwards (``Timeline``).
"""

import bisect
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

MB = 1024 * 1024


@dataclass
class Sample:
    at: float
    main_rss: int | None
    #: pid → (rss, has the watched file open)
    children: dict = field(default_factory=dict)


def _holds(process, path):
    try:
        return any(Path(f.path) == path for f in process.open_files())
    except (psutil.Error, FileNotFoundError):
        return False


class RssSampler(threading.Thread):
    """Samples ``main_process()`` (a callable, since a worker may be replaced) and its children."""

    def __init__(self, main_process, watched_file, interval=0.5):
        super().__init__(name="rss-sampler", daemon=True)
        self.main_process, self.watched = main_process, Path(watched_file).resolve()
        self.interval, self.samples = interval, []
        self._stop_event = threading.Event()

    def sample(self):
        """Take one sample now (the thread does every ``interval``; a test may add its own)."""
        try:
            main = self.main_process()
        except psutil.Error:  # the worker is being replaced
            main = None
        main_rss, children = None, {}
        if main is not None:
            try:
                main_rss = main.memory_info().rss
                kids = main.children()
            except psutil.Error:
                kids = []
            for child in kids:
                try:
                    rss = child.memory_info().rss
                except psutil.Error:
                    continue
                children[child.pid] = (rss, _holds(child, self.watched))
        self.samples.append(Sample(time.monotonic(), main_rss, children))

    def importing_child(self):
        """The pool child that has the watched file open now, or None."""
        try:
            main = self.main_process()
            kids = main.children() if main is not None else []
        except psutil.Error:
            kids = []
        return next((child for child in kids if _holds(child, self.watched)), None)

    def run(self):
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.interval)

    def stop(self):
        self._stop_event.set()
        self.join(timeout=10)
        return self.samples


class Timeline:
    """(time, progress) pairs recorded by the test's own polling; ``at(t)`` is the progress known
    at time ``t`` (a checkpoint's count, which moves a chunk at a time)."""

    def __init__(self):
        self.times, self.values = [], []

    def add(self, at, done):
        self.times.append(at)
        self.values.append(done)

    def at(self, moment):
        index = bisect.bisect_right(self.times, moment) - 1
        return self.values[index] if index >= 0 else 0


@dataclass
class Segment:
    """One pool child's part of the import: its RSS from the first sample in which it had the file
    open to the last, split at the end of its warm-up."""

    pid: int
    samples: list  # (at, rss) while it had the file open
    warm_until: float  # when the warm-up ended (None: it never ended)

    @property
    def start(self):
        return self.samples[0][1]

    @property
    def peak(self):
        return max(rss for _, rss in self.samples)

    @property
    def warm_peak(self):
        during = [rss for at, rss in self.samples if self.warm_until is None or at <= self.warm_until]
        return max(during) if during else None

    @property
    def after_warm_up(self):
        return [rss for at, rss in self.samples if self.warm_until is not None and at > self.warm_until]

    @property
    def growth(self):
        """Peak after the warm-up minus the peak during it: a chunk's sawtooth is no growth, memory
        that keeps accumulating chunk after chunk is. None when no sample came after the warm-up."""
        after = self.after_warm_up
        return max(after) - self.warm_peak if after else None


def segments(samples, timeline, *, warm_up_rows):
    """Split the samples into one ``Segment`` per pool child that ran the import; a child's warm-up
    ends once the progress moved ``warm_up_rows`` past where it was when the child started, and at
    least one checkpoint of its own was committed."""
    by_pid = {}
    for sample in sorted(samples, key=lambda sample: sample.at):  # two threads take them
        for pid, (rss, importing) in sample.children.items():
            if importing:
                by_pid.setdefault(pid, []).append((sample.at, rss))
    result = []
    for pid, points in sorted(by_pid.items(), key=lambda item: item[1][0][0]):
        first_at, last_at = points[0][0], points[-1][0]
        start_done = timeline.at(first_at)
        target = start_done + warm_up_rows
        warm_until = None
        for at, done in zip(timeline.times, timeline.values):
            if first_at <= at <= last_at and done >= target and done > start_done:
                warm_until = at
                break
        result.append(Segment(pid, points, warm_until))
    return result


def mb(value):
    return None if value is None else round(value / MB, 1)
