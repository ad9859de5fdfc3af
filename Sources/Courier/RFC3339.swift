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
        var base = cache.withLock { cache in
            if cache.second == wholeSeconds { return cache.prefix }
            let formatted = Date(timeIntervalSince1970: TimeInterval(wholeSeconds)).formatted(plain)
            cache = (wholeSeconds, String(formatted.dropLast()))
            return cache.prefix
        }
        // One allocation: the cached second, then ".mmmZ" written digit by digit.
        return base.withUTF8 { prefix in
            String(unsafeUninitializedCapacity: prefix.count + 5) { buffer in
                _ = buffer.initialize(fromContentsOf: prefix)
                let fraction = Int(positiveFraction)
                buffer[prefix.count] = UInt8(ascii: ".")
                buffer[prefix.count + 1] = UInt8(ascii: "0") + UInt8(fraction / 100)
                buffer[prefix.count + 2] = UInt8(ascii: "0") + UInt8(fraction / 10 % 10)
                buffer[prefix.count + 3] = UInt8(ascii: "0") + UInt8(fraction % 10)
                buffer[prefix.count + 4] = UInt8(ascii: "Z")
                return prefix.count + 5
            }
        }
    }

    /// Parses a timestamp with or without fractional seconds; `nil` when it is not RFC 3339.
    public static func date(from string: String) -> Date? {
        if let date = fastDate(from: string) { return date }
        return formatterDate(from: string)
    }

    /// The full parse, for every other RFC 3339 form.
    private static func formatterDate(from string: String) -> Date? {
        (try? style.parse(string)) ?? (try? plain.parse(string))
    }

    /// `YYYY-MM-DDTHH:MM:SS.mmmZ`, the form Courier writes, parsed digit by digit (no
    /// formatter, no lock: every received message carries one).
    private static func fastDate(from string: String) -> Date? {
        var string = string
        return string.withUTF8 { fastDate(utf8: UnsafeRawBufferPointer($0)) }
    }

    /// Parses a timestamp from its UTF-8 bytes (a broker header's value), without a `String`
    /// for the form Courier writes; `nil` when it is not RFC 3339.
    public static func date(utf8 bytes: UnsafeRawBufferPointer) -> Date? {
        if let date = fastDate(utf8: bytes) { return date }
        return formatterDate(from: String(decoding: bytes, as: UTF8.self))
    }

    private static func fastDate(utf8 bytes: UnsafeRawBufferPointer) -> Date? {
        do {
            guard bytes.count == 24, bytes[4] == UInt8(ascii: "-"), bytes[7] == UInt8(ascii: "-"), bytes[10] == UInt8(ascii: "T"),
                bytes[13] == UInt8(ascii: ":"), bytes[16] == UInt8(ascii: ":"), bytes[19] == UInt8(ascii: "."),
                bytes[23] == UInt8(ascii: "Z")
            else { return nil }
            var valid = true
            func number(_ from: Int, _ count: Int) -> Int {
                var value = 0
                for index in from..<(from + count) {
                    let digit = Int(bytes[index]) - 48
                    if digit < 0 || digit > 9 { valid = false }
                    value = value * 10 + digit
                }
                return value
            }
            let (year, month, day) = (number(0, 4), number(5, 2), number(8, 2))
            let (hour, minute, second, millisecond) = (number(11, 2), number(14, 2), number(17, 2), number(20, 3))
            guard valid, (1...12).contains(month), (1...31).contains(day), hour < 24, minute < 60, second < 61 else { return nil }
            // Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
            let y = month <= 2 ? year - 1 : year
            let era = (y >= 0 ? y : y - 399) / 400
            let yearOfEra = y - era * 400
            let dayOfYear = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1
            let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
            let days = era * 146_097 + dayOfEra - 719_468
            let milliseconds = ((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + millisecond
            return Date(timeIntervalSince1970: Double(milliseconds) / 1000)
        }
    }
}
