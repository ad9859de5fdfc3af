import Courier
import Synchronization

/// How a reader settles one delivery.
enum Settle: Sendable {
    case ack
    case nack(Duration)
    case deadLetter(String)
    /// Neither ack nor nack: the delivery stays un-acked until its subscription closes.
    case leave
}

/// What a read collected: ack-and-collect, de-duplicated by id.
final class Received: Sendable {
    struct Arrival: Sendable {
        var envelope: Envelope
        var attempt: Int
        var consumer: Int
    }

    private struct State {
        var arrivals = 0
        var acked: [String: Arrival] = [:]
        /// Ids in the order their first ack was about to happen.
        var ackOrder: [String] = []
        var ackedBy: [Int: Set<String>] = [:]
        var duplicates = 0
        var unacked = 0
        var last = ContinuousClock.now
        var reserved = 0
        var settled = 0
    }

    private let state = Mutex(State())
    let limit: Int?

    init(limit: Int? = nil) { self.limit = limit }

    func arrived() {
        state.withLock { state in
            state.arrivals += 1
            state.last = .now
        }
    }

    /// Whether the reader may settle one more (reads with a limit stop at the limit).
    func reserve() -> Bool {
        state.withLock { state in
            guard let limit, state.reserved >= limit else {
                state.reserved += 1
                return true
            }
            return false
        }
    }

    func willAck(_ delivery: Delivery, consumer: Int) {
        state.withLock { state in
            let id = delivery.envelope.id
            if state.acked[id] != nil {
                state.duplicates += 1
            } else {
                state.acked[id] = Arrival(envelope: delivery.envelope, attempt: delivery.attempt, consumer: consumer)
                state.ackOrder.append(id)
            }
            state.ackedBy[consumer, default: []].insert(id)
        }
    }

    func didSettle() { state.withLock { $0.settled += 1 } }
    var settled: Int { state.withLock { $0.settled } }
    var ids: Set<String> { state.withLock { Set($0.acked.keys) } }
    /// Whether every id of `expected` was acked (checked under the lock, without copying).
    func hasAll(_ expected: Set<String>) -> Bool {
        state.withLock { state in
            state.acked.count >= expected.count && expected.allSatisfy { state.acked[$0] != nil }
        }
    }
    var count: Int { state.withLock { $0.acked.count } }
    var duplicates: Int { state.withLock { $0.duplicates } }
    var arrivals: Int { state.withLock { $0.arrivals } }
    var ackOrder: [String] { state.withLock { $0.ackOrder } }
    var lastActivity: ContinuousClock.Instant { state.withLock { $0.last } }
    func arrival(_ id: String) -> Arrival? { state.withLock { $0.acked[id] } }
    func ids(ackedBy consumer: Int) -> Set<String> { state.withLock { $0.ackedBy[consumer] ?? [] } }
}

extension Scenarios {
    /// Reads `subscriptions` concurrently, settling each delivery with `settle` (ack by
    /// default), until every id of `expected` was acked (then a quiet period for extras), the
    /// read `limit` was reached, or nothing arrived for the idle timeout. Closes the
    /// subscriptions before returning.
    func read(
        _ subscriptions: [Subscription],
        expecting expected: Set<String>,
        limit: Int? = nil,
        linger: Bool = true,
        idle: Duration? = nil,
        settle: @escaping @Sendable (Delivery, Int) async throws -> Settle = { _, _ in .ack }
    ) async throws -> Received {
        let received = Received(limit: limit)
        let stopping = Locked(false)
        let idle = idle ?? suite.configuration.idleTimeout
        let quiet = suite.configuration.quietPeriod
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (index, subscription) in subscriptions.enumerated() {
                group.addTask {
                    for try await delivery in subscription {
                        received.arrived()
                        var action = try await settle(delivery, index)
                        if !received.reserve() { action = .leave }
                        do {
                            switch action {
                            case .ack:
                                received.willAck(delivery, consumer: index)
                                try await delivery.ack()
                            case .nack(let delay):
                                try await delivery.nack(delay: delay)
                            case .deadLetter(let reason):
                                try await delivery.deadLetter(reason: reason)
                            case .leave:
                                break
                            }
                            if case .leave = action {} else { received.didSettle() }
                        } catch  where stopping.value {
                            // Closing returned this delivery to the queue; settling it is moot.
                        }
                    }
                }
            }
            var completeSince: ContinuousClock.Instant?
            while true {
                try await Task.sleep(for: .milliseconds(5))
                let now = ContinuousClock.now
                if let limit, received.settled >= limit { break }
                if !expected.isEmpty, received.hasAll(expected) {
                    if !linger { break }
                    let since = completeSince ?? now
                    completeSince = since
                    if now - since >= quiet && now - received.lastActivity >= quiet { break }
                    continue
                }
                if now - received.lastActivity >= idle { break }
            }
            stopping.withLock { $0 = true }
            for subscription in subscriptions { await subscription.close() }
            try await group.waitForAll()
        }
        return received
    }

    /// Fails unless exactly the ids of `sent` were acked.
    func expectAll(_ sent: [Envelope], in received: Received, _ what: String) throws {
        let expected = Set(sent.map(\.id))
        let got = received.ids
        guard got != expected else { return }
        var failure = ConformanceFailure(
            scenario: scenario, message: "\(what): received \(got.count) of \(expected.count) distinct messages")
        failure.missing = sent.map(\.id).filter { !got.contains($0) }
        failure.extra = got.subtracting(expected).sorted()
        throw failure
    }

    func fail(_ message: String) -> ConformanceFailure {
        ConformanceFailure(scenario: scenario, message: message)
    }

    func check(_ condition: Bool, _ message: @autoclosure () -> String) throws {
        if !condition { throw fail(message()) }
    }

    /// Runs `body` with a new transport client, shutting it down afterwards.
    func withTransport<T: Sendable>(_ body: (any Transport) async throws -> T) async throws -> T {
        try await suite.makeTransport().withShutdown { try await body($0) }
    }

    /// A fresh, unique name.
    func name(_ what: String) -> String {
        var generator = SystemRandomNumberGenerator()
        let suffix = String(generator.next() & 0xFFFF_FFFF_FFFF, radix: 36)
        return "\(suite.configuration.namePrefix)-s\(scenario.rawValue)-\(what)-\(suffix)"
    }

    func count(full: Int, short: Int) -> Int {
        suite.configuration.size == .full ? full : short
    }

    /// `count` envelopes with a sequence header, payload `label-i`, and `key(i)` as key.
    func envelopes(_ count: Int, _ label: String, key: (Int) -> String? = { _ in nil }) -> [Envelope] {
        (0..<count).map { index in
            Envelope(
                text: "\(label)-\(index)",
                headers: ["x-conformance-seq": String(index), CourierHeader.type: "conformance.\(label)"],
                key: key(index)
            )
        }
    }

    /// Publishes from `publishers` concurrent tasks, each its share of `sent`, one by one.
    func publishConcurrently(_ sent: [Envelope], publishers: Int, to topic: String, on transport: any Transport) async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            for publisher in 0..<publishers {
                group.addTask {
                    for index in stride(from: publisher, to: sent.count, by: publishers) {
                        try await transport.publish(sent[index], to: topic)
                    }
                }
            }
            try await group.waitForAll()
        }
    }

    /// Fails with a timeout unless `body` finishes within `limit`.
    func within<T: Sendable>(_ limit: Duration, _ what: String, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
        try await withThrowingTaskGroup(of: T?.self) { group in
            group.addTask { try await body() }
            group.addTask {
                try await Task.sleep(for: limit)
                return nil
            }
            defer { group.cancelAll() }
            guard let first = try await group.next(), let value = first else {
                throw fail("\(what) did not finish within \(limit)")
            }
            return value
        }
    }
}

/// Deliveries of one subscription, pulled in the background, for scenarios that look at them
/// one at a time with timeouts.
final class Inbox: Sendable {
    private let buffer = Locked<[Delivery]>([])
    private let pump: Task<Void, Never>

    init(_ subscription: Subscription) {
        let buffer = self.buffer
        pump = Task {
            do {
                for try await delivery in subscription {
                    buffer.withLock { $0.append(delivery) }
                }
            } catch {}
        }
    }

    /// The next delivery within `timeout`, or `nil`.
    func next(within timeout: Duration) async throws -> Delivery? {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let delivery = buffer.withLock({ $0.isEmpty ? nil : $0.removeFirst() }) { return delivery }
            try await Task.sleep(for: .milliseconds(2))
        }
        return buffer.withLock { $0.isEmpty ? nil : $0.removeFirst() }
    }

    func stop() { pump.cancel() }
}

/// A value shared by concurrent tasks of a scenario (a `Mutex` cannot be captured by them).
final class Locked<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>
    init(_ value: Value) { mutex = Mutex(value) }
    func withLock<T: Sendable>(_ body: (inout Value) -> T) -> T { mutex.withLock { body(&$0) } }
    var value: Value { mutex.withLock { $0 } }
}
