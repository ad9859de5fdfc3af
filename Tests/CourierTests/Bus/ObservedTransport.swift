import Courier
import Foundation
import Synchronization

/// A transport that forwards to another and records what crosses it: messages confirmed,
/// and each delivery's settlement. Two controls for bus tests:
/// - `timeTravel`: a delayed nack is recorded with its delay but forwarded with none, so
///   backoff is checked without waiting for it (the clock the test controls);
/// - `holdSends` / `failSends`: `send` waits until released, or fails, to observe what the
///   bus does before and after the transport confirms.
final class ObservedTransport: Transport, @unchecked Sendable {
    enum Event: Sendable, Equatable {
        case confirmed(id: String, destination: String)
        case acked(id: String)
        case nacked(id: String, attempt: Int, delay: Duration)
        case deadLettered(id: String, reason: String)
    }

    let inner: any Transport
    let timeTravel: Bool
    private let state = Mutex<(events: [Event], failSends: Int, failPulls: Int)>(([], 0, 0))
    private let sendGate = HoldGate()
    private let deadLetterGate = HoldGate()

    init(_ inner: any Transport, timeTravel: Bool = true) {
        self.inner = inner
        self.timeTravel = timeTravel
    }

    var events: [Event] { state.withLock { $0.events } }
    func record(_ event: Event) { state.withLock { $0.events.append(event) } }

    /// The next `count` calls to `send` fail with a retriable error.
    func failSends(_ count: Int) { state.withLock { $0.failSends = count } }
    /// The next `count` deliveries a subscription takes are not handed over: its `next()`
    /// throws instead (a subscription that failed); the deliveries stay unsettled.
    func failPulls(_ count: Int) { state.withLock { $0.failPulls = count } }
    fileprivate func takeFailedPull() -> Bool {
        state.withLock { state in
            defer { state.failPulls = max(0, state.failPulls - 1) }
            return state.failPulls > 0
        }
    }
    /// Calls to `send` wait until ``releaseSends()``.
    func holdSends() { sendGate.hold() }
    func releaseSends() { sendGate.release() }
    var heldSends: Int { sendGate.heldCount }

    /// Dead-lettering waits until ``releaseDeadLetters()`` (a broker slow to confirm).
    func holdDeadLetters() { deadLetterGate.hold() }
    func releaseDeadLetters() { deadLetterGate.release() }
    var heldDeadLetters: Int { deadLetterGate.heldCount }
    fileprivate func waitForDeadLetterGate() async { await deadLetterGate.pass() }

    var capabilities: TransportCapabilities { inner.capabilities }

    func publish(_ envelopes: [Envelope], to topic: String) async throws {
        try await inner.publish(envelopes, to: topic)
        for envelope in envelopes { record(.confirmed(id: envelope.id, destination: topic)) }
    }

    func send(_ envelopes: [Envelope], to queue: String) async throws {
        await sendGate.pass()
        let fail = state.withLock { state in
            defer { state.failSends = max(0, state.failSends - 1) }
            return state.failSends > 0
        }
        if fail { throw CourierError(.notConfirmed, "injected: the broker did not confirm", isRetriable: true) }
        try await inner.send(envelopes, to: queue)
        for envelope in envelopes { record(.confirmed(id: envelope.id, destination: queue)) }
    }

    func subscribe(to topic: String, group: String, options: SubscriptionOptions) async throws -> Subscription {
        observe(try await inner.subscribe(to: topic, group: group, options: options))
    }

    func consume(queue: String, options: SubscriptionOptions) async throws -> Subscription {
        observe(try await inner.consume(queue: queue, options: options))
    }

    func deadLetterQueue(for origin: DeliveryOrigin) -> String { inner.deadLetterQueue(for: origin) }
    func shutdown() async throws { try await inner.shutdown() }
    func health() async -> TransportHealth { await inner.health() }

    private func observe(_ subscription: Subscription) -> Subscription {
        Subscription(origin: subscription.origin, source: Source(subscription: subscription, transport: self))
    }

    private struct Source: DeliverySource {
        let subscription: Subscription
        let transport: ObservedTransport
        func next() async throws -> Delivery? {
            var iterator = subscription.makeAsyncIterator()
            guard let delivery = try await iterator.next() else { return nil }
            if transport.takeFailedPull() { throw CourierError(.transportClosed, "injected: the subscription failed") }
            return Delivery(
                envelope: delivery.envelope, attempt: delivery.attempt, origin: delivery.origin, tag: delivery.tag,
                settler: Settler(delivery: delivery, transport: transport)
            )
        }
        func close() async { await subscription.close() }
    }

    private struct Settler: DeliverySettler {
        let delivery: Delivery
        let transport: ObservedTransport
        func ack(tag: UInt64) async throws {
            try await delivery.ack()
            transport.record(.acked(id: delivery.envelope.id))
        }
        func nack(tag: UInt64, delay: Duration) async throws {
            try await delivery.nack(delay: transport.timeTravel ? .zero : delay)
            transport.record(.nacked(id: delivery.envelope.id, attempt: delivery.attempt, delay: delay))
        }
        func deadLetter(tag: UInt64, reason: String, headers: [String: String]) async throws {
            await transport.waitForDeadLetterGate()
            try await delivery.deadLetter(reason: reason, headers: headers)
            transport.record(.deadLettered(id: delivery.envelope.id, reason: reason))
        }
    }
}

/// Waits until `condition` holds, polling, or fails after `timeout`.
func eventually(
    _ what: String, timeout: Duration = .seconds(10), _ condition: @Sendable () async throws -> Bool
) async throws {
    let end = ContinuousClock.now + timeout
    while ContinuousClock.now < end {
        if try await condition() { return }
        try await Task.sleep(for: .milliseconds(5))
    }
    throw TimeoutError(what: what)
}

struct TimeoutError: Error, CustomStringConvertible {
    let what: String
    var description: String { "timed out waiting for \(what)" }
}

/// A value shared by a test and its handlers.
final class Shared<Value: Sendable>: Sendable {
    private let value: Mutex<Value>
    init(_ value: Value) { self.value = Mutex(value) }
    func callAsFunction() -> Value { value.withLock { $0 } }
    func update<R: Sendable>(_ body: (inout Value) -> R) -> R { value.withLock { body(&$0) } }
}

/// Calls that wait while the gate is held, and all go on when it is released.
final class HoldGate: Sendable {
    private let state = Mutex<(holding: Bool, held: [CheckedContinuation<Void, Never>])>((false, []))
    func hold() { state.withLock { $0.holding = true } }
    func release() {
        let held = state.withLock { state in
            state.holding = false
            defer { state.held = [] }
            return state.held
        }
        for continuation in held { continuation.resume() }
    }
    var heldCount: Int { state.withLock { $0.held.count } }
    /// Returns at once while the gate is open; otherwise waits until it is released.
    func pass() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let hold = state.withLock { state in
                if state.holding { state.held.append(continuation) }
                return state.holding
            }
            if !hold { continuation.resume() }
        }
    }
}
