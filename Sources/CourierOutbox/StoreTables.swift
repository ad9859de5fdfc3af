import Courier

/// The names of a store's tables: the outbox and the inbox. Both default to `courier_…`; give
/// others to keep several services' tables in one database or to follow a naming rule.
public struct StoreTables: Sendable, Hashable {
    public var outbox: String
    public var inbox: String

    public init(outbox: String = "courier_outbox", inbox: String = "courier_inbox") {
        self.outbox = outbox
        self.inbox = inbox
    }

    /// Checks that both names are plain SQL identifiers (letters, digits and `_`, not starting
    /// with a digit, at most 48 characters) and differ: they are written into SQL.
    public func validate() throws(CourierError) {
        for name in [outbox, inbox] {
            let valid =
                !name.isEmpty && name.utf8.count <= 48
                && name.utf8.first.map { !(UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) } == true
                && name.utf8.allSatisfy { byte in
                    (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte)
                        || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || byte == UInt8(ascii: "_")
                }
            guard valid else {
                throw CourierError(
                    .invalidName,
                    "\"\(name)\" is not a usable table name; use letters, digits and _ (not first), at most 48 characters")
            }
        }
        guard outbox != inbox else {
            throw CourierError(.invalidName, "the outbox and the inbox need different tables; both are \(outbox)")
        }
    }
}

extension Duration {
    /// Whole milliseconds, for the stores' lease and retention columns.
    public var storeMilliseconds: Int64 {
        components.seconds * 1000 + components.attoseconds / 1_000_000_000_000_000
    }
}

/// The scope an inbox records a handled message id in: one per queue, and one per group and
/// topic (every group handles each event once).
public enum InboxScope {
    public static func queue(_ queue: String) -> String { "queue:\(queue)" }
    public static func group(_ group: String, topic: String) -> String { "group:\(group):\(topic)" }
}
