import Courier
import Synchronization

/// A message contract of the bus: a `Codable & Sendable` type whose values travel as the
/// payload, with its name and version in the ``CourierHeader/type`` header.
///
/// Naming convention (every default can be replaced by declaring the static property):
/// - ``messageName`` is the type's name without its module: `CustomerRegistered`. A nested
///   type named `V<n>` takes its parent's name and version `n`: `CustomerRegistered.V2` is
///   `CustomerRegistered`, version 2.
/// - ``messageVersion`` is 1 unless the type is named `V<n>`.
/// - The ``CourierHeader/type`` header is `<messageName>.v<messageVersion>`:
///   `CustomerRegistered.v2`.
/// - The destination (a topic for events, a queue for commands) is the name in kebab case,
///   with `.v<n>` appended from version 2 on: `customer-registered`, `customer-registered.v2`.
///   So two versions of one contract live side by side, each on its own destination: a
///   producer publishes both while consumers upgrade one by one.
public protocol IntegrationMessage: Codable, Sendable {
    /// The contract's name; defaults to the type's name (see the convention above).
    static var messageName: String { get }
    /// The contract's version; defaults to 1, or `n` for a type named `V<n>`.
    static var messageVersion: Int { get }
    /// The ordering key of this message (``Envelope/key``): messages with the same key are
    /// handled one at a time, in order. Defaults to `nil` (no ordering).
    var messageKey: String? { get }
}

/// A fact that happened ("CustomerRegistered"): published to a topic, read by every
/// subscribed group. Publish it with ``MessageBus/publish(_:key:headers:)``; subscribe with
/// ``MessageBus/subscribe(to:group:options:handler:)``.
public protocol IntegrationEvent: IntegrationMessage {
    /// The topic the event is published to; defaults to the convention of
    /// ``IntegrationMessage``.
    static var topic: String { get }
}

/// An instruction ("CreateCustomer"): sent to a queue, handled by exactly one handler. Send
/// it with ``MessageBus/send(_:key:headers:)``; handle it with
/// ``MessageBus/handle(_:options:handler:)``.
public protocol IntegrationCommand: IntegrationMessage {
    /// The queue the command is sent to; defaults to the convention of ``IntegrationMessage``.
    static var queue: String { get }
}

extension IntegrationMessage {
    public static var messageName: String { MessageNaming.conventional(Self.self).name }
    public static var messageVersion: Int { MessageNaming.conventional(Self.self).version }
    public var messageKey: String? { nil }

    /// The ``CourierHeader/type`` value: `<messageName>.v<messageVersion>`, worked out once
    /// per type (the bus reads it for every message it sends).
    public static var messageType: String {
        MessageNaming.derived(Self.self, .type) { "\(messageName).v\(messageVersion)" }
    }
}

extension IntegrationEvent {
    public static var topic: String {
        MessageNaming.derived(Self.self, .destination) { MessageNaming.destination(name: messageName, version: messageVersion) }
    }
}

extension IntegrationCommand {
    public static var queue: String {
        MessageNaming.derived(Self.self, .destination) { MessageNaming.destination(name: messageName, version: messageVersion) }
    }
}

/// The naming convention of ``IntegrationMessage``.
public enum MessageNaming {
    /// What the convention derives from a type, kept per type: a contract's names do not
    /// change while the process runs, and working them out reflects on the type's name.
    enum Derived: Hashable {
        case type, destination
    }

    private struct Names {
        var conventional: (name: String, version: Int)?
        var derived: [Derived: String] = [:]
    }

    private static let cache = Mutex<[ObjectIdentifier: Names]>([:])

    /// ``parse(_:)`` of `type`, worked out once.
    static func conventional(_ type: Any.Type) -> (name: String, version: Int) {
        let key = ObjectIdentifier(type)
        if let known = cache.withLock({ $0[key]?.conventional }) { return known }
        let parsed = parse(type)
        cache.withLock { $0[key, default: Names()].conventional = parsed }
        return parsed
    }

    /// The default `what` of `type`, made by `make` the first time.
    static func derived(_ type: Any.Type, _ what: Derived, make: () -> String) -> String {
        let key = ObjectIdentifier(type)
        if let known = cache.withLock({ $0[key]?.derived[what] }) { return known }
        let made = make()
        cache.withLock { $0[key, default: Names()].derived[what] = made }
        return made
    }

    /// The name and version of `type` by the convention.
    public static func parse(_ type: Any.Type) -> (name: String, version: Int) {
        var parts = String(reflecting: type).split(separator: ".").map(String.init)
        if parts.count > 1 { parts.removeFirst() }  // the module
        // Generic arguments and local-type decorations are not part of a contract's name.
        parts = parts.map { part in String(part.prefix { $0 != "<" && $0 != "(" }) }.filter { !$0.isEmpty }
        if parts.count > 1, let last = parts.last, let version = versionSuffix(last) {
            parts.removeLast()
            return (parts.joined(separator: "."), version)
        }
        return (parts.joined(separator: "."), 1)
    }

    /// `customer-registered` for `CustomerRegistered` version 1, `customer-registered.v2`
    /// for version 2.
    public static func destination(name: String, version: Int) -> String {
        var result = ""
        var previous: Character?
        for character in name {
            if character == "." {
                result.append(".")
            } else if character.isUppercase {
                if let previous, previous.isLowercase || previous.isNumber { result.append("-") }
                result.append(contentsOf: character.lowercased())
            } else {
                result.append(character)
            }
            previous = character
        }
        return version > 1 ? "\(result).v\(version)" : result
    }

    private static func versionSuffix(_ part: String) -> Int? {
        guard part.count > 1, part.first == "V" || part.first == "v" else { return nil }
        return Int(part.dropFirst()).flatMap { $0 >= 1 ? $0 : nil }
    }
}
