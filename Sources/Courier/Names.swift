/// Validation of topic, queue and group names, one rule for every transport.
///
/// A valid name is 1 to ``maximumLength`` characters of ASCII letters, digits, `.`, `_` and
/// `-`; it is not `.` or `..`, and does not start with `amq.` (reserved by RabbitMQ) or `__`
/// (reserved by Kafka). The rule is the intersection of what RabbitMQ and Kafka accept, so a
/// name that works on one transport works on all.
public enum DestinationName {
    /// The longest name accepted; dead-letter names append a suffix within Kafka's limit of 249.
    public static let maximumLength = 200

    /// What a name names, for error messages.
    public enum Kind: String, Sendable {
        case topic, queue, group
    }

    /// Throws ``CourierError/Code/invalidName`` with the reason when `name` is not valid.
    public static func validate(_ name: String, as kind: Kind) throws(CourierError) {
        if let problem = problem(with: name) {
            throw CourierError(
                .invalidName,
                "invalid \(kind.rawValue) name \(quoted(name)): \(problem); use 1-\(maximumLength) characters of A-Z a-z 0-9 . _ -"
            )
        }
    }

    /// Whether `name` is valid.
    public static func isValid(_ name: String) -> Bool { problem(with: name) == nil }

    private static func problem(with name: String) -> String? {
        if name.isEmpty { return "it is empty" }
        let utf8 = name.utf8
        if utf8.count > maximumLength { return "it is \(utf8.count) bytes long" }
        if name == "." || name == ".." { return "it is reserved" }
        if name.hasPrefix("amq.") { return "the prefix amq. is reserved by RabbitMQ" }
        if name.hasPrefix("__") { return "the prefix __ is reserved by Kafka" }
        for byte in utf8 {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "-"):
                continue
            default:
                let scalar = String(decoding: [byte], as: UTF8.self)
                return byte < 0x80 ? "it contains \(quoted(scalar))" : "it contains a non-ASCII character"
            }
        }
        return nil
    }

    private static func quoted(_ s: String) -> String {
        let shown = s.count > 60 ? String(s.prefix(60)) + "…" : s
        return "\"\(shown)\""
    }
}
