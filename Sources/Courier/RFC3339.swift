import Foundation
import Synchronization

/// RFC 3339 timestamps with millisecond precision, as CloudEvents' `time` attribute uses.
public enum RFC3339 {
    private static let style = Date.ISO8601FormatStyle(includingFractionalSeconds: true)
    private static let plain = Date.ISO8601FormatStyle()
    private static let cache = Mutex<(second: Int64, prefix: String)>((Int64.min, ""))

    /// `2026-11-22T08:15:30.123Z`.
    public static func string(from date: Date) -> String {
        // Integer milliseconds, rounded: formatting the Double directly truncates .123 to .122.
        let milliseconds = date.clampedMillisecondsSince1970
        let (seconds, fraction) = milliseconds.quotientAndRemainder(dividingBy: 1000)
        let (wholeSeconds, positiveFraction) = fraction < 0 ? (seconds - 1, fraction + 1000) : (seconds, fraction)
        // Every message gets a timestamp: format each second once, then only append milliseconds.
        let base = cache.withLock { cache in
            if cache.second == wholeSeconds { return cache.prefix }
            let formatted = Date(timeIntervalSince1970: TimeInterval(wholeSeconds)).formatted(plain)
            cache = (wholeSeconds, String(formatted.dropLast()))
            return cache.prefix
        }
        let digits = String(positiveFraction)
        return base + "." + String(repeating: "0", count: 3 - digits.count) + digits + "Z"
    }

    /// Parses a timestamp with or without fractional seconds; `nil` when it is not RFC 3339.
    public static func date(from string: String) -> Date? {
        if let date = fastDate(from: string) { return date }
        return (try? style.parse(string)) ?? (try? plain.parse(string))
    }

    private static let parsed = Mutex<(prefix: Substring, seconds: Double)>(("", 0))

    /// `YYYY-MM-DDTHH:MM:SS.mmmZ`, the form Courier writes, without a full parse: the second
    /// is parsed once and remembered (messages arrive in bursts from the same second).
    private static func fastDate(from string: String) -> Date? {
        let utf8 = string.utf8
        guard utf8.count == 24, utf8.last == UInt8(ascii: "Z") else { return nil }
        let dot = utf8.index(utf8.startIndex, offsetBy: 19)
        guard utf8[dot] == UInt8(ascii: ".") else { return nil }
        var milliseconds = 0
        for byte in utf8[utf8.index(after: dot)..<utf8.index(dot, offsetBy: 4)] {
            guard (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) else { return nil }
            milliseconds = milliseconds * 10 + Int(byte - UInt8(ascii: "0"))
        }
        let prefix = Substring(string)[..<String.Index(dot, within: string)!]
        let cached = parsed.withLock { $0.prefix == prefix ? $0.seconds : nil }
        let seconds: Double
        if let cached {
            seconds = cached
        } else {
            guard let date = try? plain.parse(String(prefix) + "Z") else { return nil }
            seconds = date.timeIntervalSince1970
            parsed.withLock { $0 = (prefix, seconds) }
        }
        return Date(timeIntervalSince1970: seconds + Double(milliseconds) / 1000)
    }
}
