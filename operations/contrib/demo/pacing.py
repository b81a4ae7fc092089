"""Optional rate limits for long steps (``rows_per_second``): keep a big job from hogging the database."""

import time


class Pace:
    """Sleep as needed so that ``rate`` units per second are not exceeded (no limit when rate is falsy)."""

    def __init__(self, rate):
        self.rate = rate
        self.started = time.monotonic()
        self.units = 0

    def __call__(self, units):
        self.units += units
        if self.rate:
            ahead = self.units / self.rate - (time.monotonic() - self.started)
            if ahead > 0:
                time.sleep(ahead)
