import Courier
import CourierBus
import Foundation
import Testing

/// Library conversions of user- or broker-given numbers never trap.
@Suite("Safe numeric conversions")
struct SafeConversionTests {
    @Test func hugeAndOddDatesFormatWithoutTrapping() {
        for date in [
            Date(timeIntervalSince1970: .infinity), Date(timeIntervalSince1970: -.infinity), Date(timeIntervalSince1970: .nan),
            Date(timeIntervalSince1970: 1e300), .distantFuture, .distantPast,
        ] {
            _ = RFC3339.string(from: date)
        }
        #expect(RFC3339.string(from: Date(timeIntervalSince1970: 0)) == "1970-01-01T00:00:00.000Z")
    }

    @Test func retryDelaysWithHugeLimitsDoNotTrap() {
        let policy = RetryPolicy(
            immediateRetries: 0, delayedRetries: 100, initialDelay: .seconds(Int64.max / 2), multiplier: 1000,
            maxDelay: .seconds(Int64.max), jitter: 1)
        for retry in [1, 2, 50, 100, Int.max] {
            #expect(policy.delay(beforeDelayedRetry: retry, random: 0.99) >= .zero)
        }
    }

    @Test func durationsInMillisecondsClamp() {
        #expect(Duration.seconds(Int64.max).clampedMilliseconds == Int64.max)
        #expect(Duration.seconds(-5).clampedMilliseconds == 0)
        #expect(Duration.milliseconds(1500).clampedMilliseconds == 1500)
        #expect(Duration.nanoseconds(1).clampedMilliseconds == 1)
        #expect(Duration.checkedSeconds(.nan) == nil)
        #expect(Duration.checkedSeconds(.infinity) == nil)
        #expect(Duration.checkedSeconds(-1) == nil)
        #expect(Duration.checkedSeconds(1e300) == nil)
        #expect(Duration.checkedSeconds(0.25) == .milliseconds(250))
        #expect(Int64(clamping: Double.nan) == 0)
        #expect(Int64(clamping: 1e300) == .max)
        #expect(Date(timeIntervalSince1970: .infinity).clampedMillisecondsSince1970 == .max)
    }
}
