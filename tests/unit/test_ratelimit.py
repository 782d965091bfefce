from stagebox.ratelimit import RateLimiter


class FakeClock:
    def __init__(self):
        self.now = 0.0
        self.slept = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.slept += seconds
        self.now += seconds


def test_rate_is_capped_across_calls():
    clock = FakeClock()
    limiter = RateLimiter(1000, clock=clock, sleep=clock.sleep)
    for _ in range(10):
        limiter.consume(500)
    assert 4.4 <= clock.slept <= 5.0  # 5,000 bytes at 1,000 B/s


def test_zero_means_unlimited():
    clock = FakeClock()
    RateLimiter(0, clock=clock, sleep=clock.sleep).consume(10**9)
    assert clock.slept == 0
