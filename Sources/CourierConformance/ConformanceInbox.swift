import Courier
import CourierBus
import Synchronization

/// A durable inbox as bus scenario B7 (``BusScenario/exactlyOnceWithInbox``) drives it: the
/// store's inbox handler, reduced to one counted effect per command. A store product conforms
/// with a few lines over its `bus.handle(_:inbox:)` (see `Tests/StoreConformance`);
/// ``InMemoryConformanceInbox`` is the reference that runs without a database.
public protocol ConformanceInbox: Sendable {
    /// Registers a handler for commands of `C` on `bus` through the inbox. In the transaction
    /// that records the command's id, the handler adds one to the count of `effect(command)`,
    /// then calls `then(command)`, which may throw to roll both back.
    func handle<C: IntegrationCommand>(
        _ type: C.Type, on bus: MessageBus, options: HandlerOptions, effect: @escaping @Sendable (C) -> Int,
        then: @escaping @Sendable (C) throws -> Void
    ) async throws

    /// The committed effects: how often each effect was counted.
    func effects() async throws -> [Int: Int]
}

/// The reference ``ConformanceInbox``: handled ids and effects in memory, committed together
/// under one lock.
public final class InMemoryConformanceInbox: ConformanceInbox {
    private struct State {
        var handled: Set<String> = []
        var effects: [Int: Int] = [:]
    }

    private let state = Mutex(State())

    public init() {}

    public func handle<C: IntegrationCommand>(
        _ type: C.Type, on bus: MessageBus, options: HandlerOptions, effect: @escaping @Sendable (C) -> Int,
        then: @escaping @Sendable (C) throws -> Void
    ) async throws {
        let scope = "queue:\(C.queue)"
        try await bus.handle(C.self, options: options) { command, context in
            let id = "\(scope)|\(context.messageID)"
            guard !self.state.withLock({ $0.handled.contains(id) }) else { return }
            try then(command)  // a failure commits nothing
            self.state.withLock { state in
                guard state.handled.insert(id).inserted else { return }
                state.effects[effect(command), default: 0] += 1
            }
        }
    }

    public func effects() async throws -> [Int: Int] { state.withLock { $0.effects } }
}
