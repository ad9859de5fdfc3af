import Foundation

/// RFC 3339 timestamps with millisecond precision, as CloudEvents' `time` attribute uses.
public enum RFC3339 {
    private static let style = Date.ISO8601FormatStyle(includingFractionalSeconds: true)
    private static let plain = Date.ISO8601FormatStyle()

    /// `2026-11-22T08:15:30.123Z`.
    public static func string(from date: Date) -> String {
        // Integer milliseconds, rounded: formatting the Double directly truncates .123 to .122.
        let milliseconds = Int64((date.timeIntervalSince1970 * 1000).rounded())
        let (seconds, fraction) = milliseconds.quotientAndRemainder(dividingBy: 1000)
        let (wholeSeconds, positiveFraction) = fraction < 0 ? (seconds - 1, fraction + 1000) : (seconds, fraction)
        let base = Date(timeIntervalSince1970: TimeInterval(wholeSeconds)).formatted(plain)
        let digits = String(positiveFraction)
        return base.dropLast() + "." + String(repeating: "0", count: 3 - digits.count) + digits + "Z"
    }

    /// Parses a timestamp with or without fractional seconds; `nil` when it is not RFC 3339.
    public static func date(from string: String) -> Date? {
        (try? style.parse(string)) ?? (try? plain.parse(string))
    }
}
