//! A client's request rate limit: a token bucket of `server.requests_per_second` refilled up to
//! `server.request_burst`, and the rule that ends a client which keeps asking while refused.

use std::time::Instant;

/// A client refused this many bursts' worth of requests in a row is closed with 4029.
const ABUSE_FACTOR: u32 = 10;

/// What the limiter says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the rate: serve it.
    Allowed,
    /// Over the rate: answer `rate_limited`.
    Refused,
    /// Refused too many times in a row: end the connection.
    Abuse,
}

/// Per-connection request rate limit, with the count of refusals in a row.
pub struct RateLimit {
    bucket: TokenBucket,
    burst: u32,
    /// Requests refused in a row.
    refused: u32,
}

impl RateLimit {
    pub fn new(rate: f64, burst: u32) -> RateLimit {
        RateLimit {
            bucket: TokenBucket::new(rate, burst),
            burst,
            refused: 0,
        }
    }

    /// Takes one request's token.
    pub fn check(&mut self) -> Verdict {
        if self.bucket.take() {
            self.refused = 0;
            return Verdict::Allowed;
        }
        self.refused += 1;
        if self.refused > self.burst.saturating_mul(ABUSE_FACTOR) {
            return Verdict::Abuse;
        }
        Verdict::Refused
    }
}

struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    fn new(rate: f64, burst: u32) -> TokenBucket {
        let burst = f64::from(burst);
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            at: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_past_the_burst_then_calls_a_long_refusal_abuse() {
        // A rate too low to refill during the test.
        let mut limit = RateLimit::new(1e-9, 2);
        assert_eq!(limit.check(), Verdict::Allowed);
        assert_eq!(limit.check(), Verdict::Allowed);
        for _ in 0..2 * ABUSE_FACTOR {
            assert_eq!(limit.check(), Verdict::Refused);
        }
        assert_eq!(limit.check(), Verdict::Abuse);
    }
}
