import Foundation

// Conversions between Double, Duration and integers that never trap: huge, negative,
// infinite and NaN inputs are clamped (NaN to zero). Every conversion of a user-given or
// broker-given number in Courier goes through these.

extension Duration {
    /// Whole milliseconds, rounded up, clamped to `0...Int64.max`.
    package var clampedMilliseconds: Int64 {
        let (seconds, attoseconds) = components
        guard seconds >= 0, attoseconds >= 0 || seconds > 0 else { return 0 }
        let (whole, overflow) = seconds.multipliedReportingOverflow(by: 1000)
        if overflow { return .max }
        let (total, overflowAgain) = whole.addingReportingOverflow((attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000)
        return overflowAgain ? .max : max(0, total)
    }

    /// `seconds` as a duration: `nil` unless it is finite and within `0...maximum`.
    package static func checkedSeconds(_ seconds: Double, maximum: Double = 365 * 86_400) -> Duration? {
        guard seconds.isFinite, seconds >= 0, seconds <= maximum else { return nil }
        return .nanoseconds(Int64((seconds * 1e9).rounded()))
    }
}

extension Int64 {
    /// `value` rounded, clamped to `Int64`'s range; NaN becomes 0.
    package init(clamping value: Double) {
        if value.isNaN {
            self = 0
        } else if value >= 9.223_372_036_854_775e18 {
            self = .max
        } else if value <= -9.223_372_036_854_775e18 {
            self = .min
        } else {
            self = Int64(value.rounded())
        }
    }
}

extension Date {
    /// Milliseconds since 1970, clamped to `Int64` (a date of `.infinity` does not trap).
    package var clampedMillisecondsSince1970: Int64 {
        Int64(clamping: timeIntervalSince1970 * 1000)
    }
}
