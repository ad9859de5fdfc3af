import CRabbitMQ
import Courier
import Foundation

/// Conversions between Swift values and librabbitmq's `amqp_bytes_t` and field tables.
enum AMQPCodec {
    /// A Swift string from AMQP bytes (invalid UTF-8 is repaired, never fatal).
    static func string(_ bytes: amqp_bytes_t) -> String {
        guard bytes.len > 0, let pointer = bytes.bytes else { return "" }
        return String(decoding: UnsafeRawBufferPointer(start: pointer, count: bytes.len), as: UTF8.self)
    }

    static func array(_ bytes: amqp_bytes_t) -> [UInt8] {
        guard bytes.len > 0, let pointer = bytes.bytes else { return [] }
        return Array(UnsafeRawBufferPointer(start: pointer, count: bytes.len))
    }

    /// Every entry of `table` as a string, whatever its AMQP type: strings as they are,
    /// numbers in decimal, timestamps in RFC 3339, nested tables and arrays (such as the
    /// broker's `x-death`) as JSON-like text. Reading never fails.
    static func strings(_ table: amqp_table_t) -> [String: String] {
        var result: [String: String] = [:]
        guard table.num_entries > 0, let entries = table.entries else { return result }
        result.reserveCapacity(Int(table.num_entries))
        for index in 0..<Int(table.num_entries) {
            let entry = entries[index]
            result[string(entry.key)] = text(entry.value)
        }
        return result
    }

    static func text(_ value: amqp_field_value_t) -> String {
        switch Int(value.kind) {
        case Int(AMQP_FIELD_KIND_UTF8.rawValue), Int(AMQP_FIELD_KIND_BYTES.rawValue): return string(value.value.bytes)
        case Int(AMQP_FIELD_KIND_BOOLEAN.rawValue): return value.value.boolean != 0 ? "true" : "false"
        case Int(AMQP_FIELD_KIND_I8.rawValue): return String(value.value.i8)
        case Int(AMQP_FIELD_KIND_U8.rawValue): return String(value.value.u8)
        case Int(AMQP_FIELD_KIND_I16.rawValue): return String(value.value.i16)
        case Int(AMQP_FIELD_KIND_U16.rawValue): return String(value.value.u16)
        case Int(AMQP_FIELD_KIND_I32.rawValue): return String(value.value.i32)
        case Int(AMQP_FIELD_KIND_U32.rawValue): return String(value.value.u32)
        case Int(AMQP_FIELD_KIND_I64.rawValue): return String(value.value.i64)
        case Int(AMQP_FIELD_KIND_U64.rawValue): return String(value.value.u64)
        case Int(AMQP_FIELD_KIND_F32.rawValue): return String(value.value.f32)
        case Int(AMQP_FIELD_KIND_F64.rawValue): return String(value.value.f64)
        case Int(AMQP_FIELD_KIND_TIMESTAMP.rawValue):
            return RFC3339.string(from: Date(timeIntervalSince1970: TimeInterval(value.value.u64)))
        case Int(AMQP_FIELD_KIND_DECIMAL.rawValue):
            let decimal = value.value.decimal
            var digits = String(decimal.value)
            let places = Int(decimal.decimals)
            if places > 0 {
                digits = String(repeating: "0", count: max(0, places + 1 - digits.count)) + digits
                digits.insert(".", at: digits.index(digits.endIndex, offsetBy: -places))
            }
            return digits
        case Int(AMQP_FIELD_KIND_TABLE.rawValue):
            let entries = strings(value.value.table).sorted { $0.key < $1.key }
            return "{" + entries.map { "\"\($0.key)\": \"\($0.value)\"" }.joined(separator: ", ") + "}"
        case Int(AMQP_FIELD_KIND_ARRAY.rawValue):
            let array = value.value.array
            guard array.num_entries > 0, let items = array.entries else { return "[]" }
            return "[" + (0..<Int(array.num_entries)).map { text(items[$0]) }.joined(separator: ", ") + "]"
        case Int(AMQP_FIELD_KIND_VOID.rawValue): return ""
        default: return ""
        }
    }

    /// A field value as written in a table argument.
    enum Argument {
        case string(String)
        case int(Int64)
    }

    /// Calls `body` with an AMQP table holding `entries`; the table and the bytes it points to
    /// live only during the call (librabbitmq encodes them at once).
    static func withTable<R>(_ entries: [(String, Argument)], _ body: (amqp_table_t) throws -> R) rethrows -> R {
        if entries.isEmpty { return try body(amqp_empty_table) }
        var total = 0
        for (key, value) in entries {
            total += key.utf8.count
            if case .string(let text) = value { total += text.utf8.count }
        }
        let storage = UnsafeMutableRawPointer.allocate(byteCount: max(1, total), alignment: 1)
        let table = UnsafeMutablePointer<amqp_table_entry_t>.allocate(capacity: entries.count)
        defer {
            storage.deallocate()
            table.deallocate()
        }
        var offset = 0
        func bytes(_ text: String) -> amqp_bytes_t {
            let start = storage + offset
            var count = 0
            for byte in text.utf8 {
                start.storeBytes(of: byte, toByteOffset: count, as: UInt8.self)
                count += 1
            }
            offset += count
            return amqp_bytes_t(len: count, bytes: start)
        }
        for (index, (key, value)) in entries.enumerated() {
            var field = amqp_field_value_t()
            switch value {
            case .string(let text):
                field.kind = UInt8(AMQP_FIELD_KIND_UTF8.rawValue)
                field.value.bytes = bytes(text)
            case .int(let number):
                field.kind = UInt8(AMQP_FIELD_KIND_I64.rawValue)
                field.value.i64 = number
            }
            (table + index).initialize(to: amqp_table_entry_t(key: bytes(key), value: field))
        }
        return try body(amqp_table_t(num_entries: Int32(entries.count), entries: table))
    }

    /// Calls `body` with `text` as AMQP bytes valid during the call.
    static func withBytes<R>(_ text: String, _ body: (amqp_bytes_t) throws -> R) rethrows -> R {
        var text = text
        return try text.withUTF8 { buffer in
            try body(amqp_bytes_t(len: buffer.count, bytes: UnsafeMutableRawPointer(mutating: buffer.baseAddress)))
        }
    }
}
