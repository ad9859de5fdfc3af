import Foundation

/// RFC 3339 timestamps with millisecond precision, as CloudEvents' `time` attribute uses.
public enum RFC3339 {
    private static let style = Date.ISO8601FormatStyle(includingFractionalSeconds: true)
    private static let plain = Date.ISO8601FormatStyle()

    /// `2026-11-22T08:15:30.123Z`.
    public static func string(from date: Date) -> String {
        date.formatted(style)
    }

    /// Parses a timestamp with or without fractional seconds; `nil` when it is not RFC 3339.
    public static func date(from string: String) -> Date? {
        (try? style.parse(string)) ?? (try? plain.parse(string))
    }
}
