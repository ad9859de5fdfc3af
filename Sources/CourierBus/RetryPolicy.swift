import Courier
import Foundation

/// What the bus does when a handler throws: first ``immediateRetries`` more calls right away
/// (for blips such as a dropped database connection), then up to ``delayedRetries``
/// redeliveries through the transport (``Delivery/nack(delay:)``) with exponential backoff
/// and jitter, then the dead-letter queue with the error in headers.
///
/// A delayed retry gives the message back to the transport, so it never blocks other
/// messages of the stream: they are handled while it waits. (Messages with the same key wait
/// for it where the transport orders per key.) With the defaults a message is tried 3 times
/// at once, then after about 1 s, 2 s and 4 s: 12 calls over about 7 s before it is
/// dead-lettered.
public struct RetryPolicy: Sendable, Hashable {
    /// Calls repeated at once after the first failure of a delivery. Default 2.
    public var immediateRetries: Int
    /// Redeliveries after a delay, once the immediate retries failed. Default 3.
    public var delayedRetries: Int
    /// The delay before the first delayed retry. Default 1 s.
    public var initialDelay: Duration
    /// Each delayed retry waits this many times longer than the one before. Default 2.
    public var multiplier: Double
    /// The longest delay. Default 5 minutes.
    public var maxDelay: Duration
    /// The relative spread of each delay: 0.2 means ±20 %, so that messages failing
    /// together do not come back together. Default 0.2.
    public var jitter: Double

    /// Creates a policy; every parameter has the documented default.
    public init(
        immediateRetries: Int = 2,
        delayedRetries: Int = 3,
        initialDelay: Duration = .seconds(1),
        multiplier: Double = 2,
        maxDelay: Duration = .seconds(300),
        jitter: Double = 0.2
    ) {
        self.immediateRetries = immediateRetries
        self.delayedRetries = delayedRetries
        self.initialDelay = initialDelay
        self.multiplier = multiplier
        self.maxDelay = maxDelay
        self.jitter = jitter
    }

    /// No retries: the first failure dead-letters the message.
    public static let none = RetryPolicy(immediateRetries: 0, delayedRetries: 0)

    /// Throws ``CourierError/Code/invalidConfiguration`` for values out of range.
    public func validate() throws(CourierError) {
        func fail(_ text: String) -> CourierError { CourierError(.invalidConfiguration, "retry policy: \(text)") }
        guard immediateRetries >= 0 else { throw fail("immediateRetries is \(immediateRetries); it must be 0 or more") }
        guard delayedRetries >= 0 else { throw fail("delayedRetries is \(delayedRetries); it must be 0 or more") }
        guard initialDelay >= .zero, maxDelay >= initialDelay else {
            throw fail("delays must satisfy 0 <= initialDelay (\(initialDelay)) <= maxDelay (\(maxDelay))")
        }
        guard multiplier >= 1 else { throw fail("multiplier is \(multiplier); it must be at least 1") }
        guard (0...1).contains(jitter) else { throw fail("jitter is \(jitter); it must be between 0 and 1") }
    }

    /// The delay before delayed retry `retry` (1 for the first), with `random` in `0..<1`
    /// choosing the point within the jitter: `initialDelay × multiplier^(retry−1)`, capped at
    /// `maxDelay`, then scaled by a factor in `1 − jitter ..< 1 + jitter` (and capped again).
    public func delay(beforeDelayedRetry retry: Int, random: Double) -> Duration {
        let initial = initialDelay.seconds
        let base = min(initial * pow(multiplier, Double(max(retry, 1) - 1)), maxDelay.seconds)
        let factor = 1 + jitter * (2 * min(max(random, 0), 1) - 1)
        return .milliseconds(Int64(clamping: min(base * factor, maxDelay.seconds) * 1000))
    }
}

extension Duration {
    /// The duration in seconds, as a `Double`.
    var seconds: Double {
        Double(components.seconds) + Double(components.attoseconds) / 1e18
    }
}
