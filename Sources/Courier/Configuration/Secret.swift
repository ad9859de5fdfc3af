/// A value that must never be printed: passwords and keys.
///
/// `description`, `debugDescription` and string interpolation show `******`; only
/// ``revealed`` gives the value, for handing it to the broker.
public struct Secret: Sendable, Hashable, CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable,
    ExpressibleByStringLiteral
{
    private let value: String

    /// Wraps `value`.
    public init(_ value: String) { self.value = value }
    public init(stringLiteral value: String) { self.value = value }

    /// The secret itself. Pass it to the broker; never log it.
    public var revealed: String { value }
    /// Whether the secret is the empty string.
    public var isEmpty: Bool { value.isEmpty }

    public var description: String { "******" }
    public var debugDescription: String { "Secret(******)" }
    /// No children, so `dump` and other mirror-based printers never show the value.
    public var customMirror: Mirror { Mirror(self, children: [], displayStyle: .struct) }
}
