import Courier
import Foundation
import Synchronization
import Testing

/// Behaviours of the in-memory transport beyond the conformance suite: bounded memory,
/// timers, cancellation, prefetch, and settling rules.
@Suite("InMemoryTransport")
struct InMemoryTransportTests {
    private func transport(_ configure: (inout InMemoryBroker.Configuration) -> Void = { _ in }) throws -> InMemoryTransport {
        var configuration = InMemoryBroker.Configuration()
        configure(&configuration)
        return try InMemoryTransport(configuration: configuration)
    }

    private func next(_ subscription: Subscription) async throws -> Delivery {
        var iterator = subscription.makeAsyncIterator()
        return try #require(try await iterator.next())
    }

    @Test func aFullQueueRejectsWhenConfiguredToAndKeepsWhatItHas() async throws {
        let transport = try transport {
            $0.queueCapacity = 3; $0.overflow = .reject
        }
        try await transport.send([Envelope(text: "1"), Envelope(text: "2"), Envelope(text: "3")], to: "jobs")
        await #expect(throws: CourierError.self) { try await transport.send(Envelope(text: "4"), to: "jobs") }
        do {
            try await transport.send(Envelope(text: "4"), to: "jobs")
        } catch let error as CourierError {
            #expect(error.code == .queueFull)
            #expect(error.isRetriable)
        }
        #expect(transport.broker.depth(ofQueue: "jobs") == 3)
        let consumer = try await transport.consume(queue: "jobs")
        try await next(consumer).ack()
        try await transport.send(Envelope(text: "4"), to: "jobs")
        #expect(transport.broker.depth(ofQueue: "jobs") == 3)
    }

    @Test func aFullQueueMakesPublishersWaitUntilConsumersMakeRoom() async throws {
        let transport = try transport { $0.queueCapacity = 4 }
        let group = try await transport.subscribe(to: "events", group: "slow")
        let published = Counter()
        let publisher = Task {
            for index in 0..<8 {
                try await transport.publish(Envelope(text: "\(index)"), to: "events")
                published.increment()
            }
        }
        try await Task.sleep(for: .milliseconds(100))
        #expect(published.value == 4, "the publisher must wait at capacity")
        #expect(transport.broker.depth(ofGroup: "slow", topic: "events") == 4)
        var iterator = group.makeAsyncIterator()
        for _ in 0..<8 { try await iterator.next()!.ack() }
        try await publisher.value
        #expect(published.value == 8)
    }

    /// The bound counts bytes too: with the default configuration, 16 KiB payloads stop at
    /// 64 MiB, not at 100,000 messages (1.6 GB).
    @Test func theDefaultByteBudgetBoundsLargePayloads() async throws {
        let transport = try transport { $0.overflow = .reject }
        let payload = [UInt8](repeating: 0x61, count: 16 << 10)
        var stored = 0
        do {
            while stored < 100_000 {
                try await transport.send(Envelope(payload: payload), to: "big")
                stored += 1
            }
            Issue.record("100,000 messages of 16 KiB were stored")
        } catch let error as CourierError {
            #expect(error.code == .queueFull)
            #expect(error.message.contains("67108864 payload bytes"), "\(error.message)")
        }
        #expect(stored == (64 << 20) / (16 << 10), "64 MiB of 16 KiB payloads: \(stored)")
        #expect(InMemoryBroker.Configuration().queueByteCapacity == 64 << 20)
    }

    @Test func aQueueFullOfBytesMakesPublishersWaitUntilConsumersMakeRoom() async throws {
        let transport = try transport { $0.queueByteCapacity = 1000 }
        let group = try await transport.subscribe(to: "events", group: "slow")
        let published = Counter()
        let publisher = Task {
            for _ in 0..<6 {
                try await transport.publish(Envelope(payload: [UInt8](repeating: 1, count: 400)), to: "events")
                published.increment()
            }
        }
        try await Task.sleep(for: .milliseconds(100))
        #expect(published.value == 2, "two 400-byte messages fit in 1000 bytes; the third waits")
        var iterator = group.makeAsyncIterator()
        for _ in 0..<6 { try await iterator.next()!.ack() }
        try await publisher.value
        #expect(published.value == 6)
    }

    @Test func anEmptyQueueTakesOneMessageLargerThanItsByteBudget() async throws {
        let transport = try transport {
            $0.queueByteCapacity = 10; $0.overflow = .reject
        }
        try await transport.send(Envelope(payload: [UInt8](repeating: 1, count: 100)), to: "q")
        await #expect(throws: CourierError.self) { try await transport.send(Envelope(payload: [1]), to: "q") }
        let consumer = try await transport.consume(queue: "q")
        try await next(consumer).ack()
        try await transport.send(Envelope(payload: [1]), to: "q")
    }

    @Test func retentionIsBoundedInBytesToo() async throws {
        let transport = try transport { $0.retentionBytes = 250 }
        try await transport.publish((0..<10).map { Envelope(payload: [UInt8](repeating: UInt8($0), count: 100)) }, to: "log")
        let late = try await transport.subscribe(to: "log", group: "late", options: SubscriptionOptions(startPosition: .earliest))
        var firstBytes: [UInt8] = []
        for try await delivery in late {
            firstBytes.append(delivery.envelope.payload[0])
            try await delivery.ack()
            if firstBytes.count == 2 { await late.close() }
        }
        #expect(firstBytes == [8, 9])
        #expect(transport.broker.depth(ofGroup: "late", topic: "log") == 0)
    }

    @Test func aPublisherWaitingForRoomCanBeCancelled() async throws {
        let transport = try transport { $0.queueCapacity = 1 }
        _ = try await transport.subscribe(to: "events", group: "nobody-reads")
        try await transport.publish(Envelope(text: "fills the queue"), to: "events")
        let blocked = Task { try await transport.publish(Envelope(text: "waits"), to: "events") }
        try await Task.sleep(for: .milliseconds(50))
        blocked.cancel()
        await #expect(throws: CancellationError.self) { try await blocked.value }
    }

    @Test func nackWithDelayRedeliversAfterTheDelay() async throws {
        let transport = try transport()
        let consumer = try await transport.consume(queue: "retry")
        try await transport.send(Envelope(text: "again"), to: "retry")
        var iterator = consumer.makeAsyncIterator()
        let first = try #require(try await iterator.next())
        let nackedAt = ContinuousClock.now
        try await first.nack(delay: .milliseconds(200))
        let second = try #require(try await iterator.next())
        let waited = ContinuousClock.now - nackedAt
        #expect(waited >= .milliseconds(200))
        #expect(second.attempt == 2)
        #expect(second.envelope.id == first.envelope.id)
        try await second.ack()
    }

    @Test func aNackedKeyedMessageComesBeforeLaterMessagesOfItsKey() async throws {
        let transport = try transport()
        let consumer = try await transport.consume(queue: "ordered")
        let messages = (0..<3).map { Envelope(text: "\($0)", key: "k") }
        try await transport.send(messages, to: "ordered")
        var iterator = consumer.makeAsyncIterator()
        let first = try #require(try await iterator.next())
        try await first.nack(delay: .milliseconds(50))
        var order: [String] = []
        for _ in 0..<3 {
            let delivery = try #require(try await iterator.next())
            order.append(delivery.envelope.text!)
            try await delivery.ack()
        }
        #expect(order == ["0", "1", "2"])
    }

    @Test func unorderedBrokersDoNotHoldKeysBack() async throws {
        let transport = try transport { $0.ordered = false }
        #expect(transport.capabilities.ordering == .none)
        let consumer = try await transport.consume(queue: "loose")
        try await transport.send([Envelope(text: "1", key: "k"), Envelope(text: "2", key: "k")], to: "loose")
        var iterator = consumer.makeAsyncIterator()
        _ = try #require(try await iterator.next())
        _ = try #require(try await iterator.next())
    }

    @Test func prefetchBoundsUnackedDeliveriesPerConsumer() async throws {
        let transport = try transport()
        let greedy = try await transport.consume(queue: "work", options: SubscriptionOptions(prefetch: 2))
        let other = try await transport.consume(queue: "work")
        try await transport.send((0..<5).map { Envelope(text: "\($0)") }, to: "work")
        var greedyIterator = greedy.makeAsyncIterator()
        let held = [try await greedyIterator.next()!, try await greedyIterator.next()!]
        let third = Task { try await greedyIterator.next() }
        try await Task.sleep(for: .milliseconds(50))
        var otherIterator = other.makeAsyncIterator()
        for _ in 0..<3 { try await otherIterator.next()!.ack() }
        try await held[0].ack()
        try await held[1].ack()
        await greedy.close()
        #expect(try await third.value == nil, "the third delivery must wait for an ack, then end with the close")
    }

    /// A consumer takes a batch from its queue ahead of being asked (one lock per batch): the
    /// batch is in flight for it, a competing consumer gets what is left, and a close returns
    /// the batch to the queue — iteration ends at once, nothing of the batch is handed out
    /// after it, and nothing is lost.
    @Test func aBatchTakenAheadGoesBackOnClose() async throws {
        let transport = try transport()
        let first = try await transport.consume(queue: "batch", options: SubscriptionOptions(prefetch: 10))
        try await transport.send((0..<20).map { Envelope(text: "\($0)") }, to: "batch")
        var iterator = first.makeAsyncIterator()
        let one = try #require(try await iterator.next())
        #expect(one.envelope.text == "0")
        #expect(transport.broker.depth(ofQueue: "batch") == 20)
        let other = try await transport.consume(queue: "batch")
        var otherIterator = other.makeAsyncIterator()
        let afterBatch = try #require(try await otherIterator.next())
        #expect(afterBatch.envelope.text == "10", "the first consumer's prefetch of 10 was taken ahead")
        try await afterBatch.ack()
        await first.close()
        #expect(try await iterator.next() == nil, "nothing of the batch is handed out after the close")
        var texts: [String] = []
        for _ in 0..<19 {
            let delivery = try #require(try await otherIterator.next())
            texts.append(delivery.envelope.text ?? "")
            try await delivery.ack()
        }
        #expect(Set(texts) == Set((0..<20).filter { $0 != 10 }.map { "\($0)" }), "the batch came back: \(texts)")
        await other.close()
    }

    @Test func waitingForADeliveryEndsWhenTheTaskIsCancelled() async throws {
        let transport = try transport()
        let consumer = try await transport.consume(queue: "idle")
        let waiting = Task { () -> Delivery? in
            var iterator = consumer.makeAsyncIterator()
            return try await iterator.next()
        }
        try await Task.sleep(for: .milliseconds(20))
        waiting.cancel()
        #expect(try await waiting.value == nil)
        try await transport.send(Envelope(text: "still delivered"), to: "idle")
        let again = try await transport.consume(queue: "idle")
        await consumer.close()
        #expect(try await next(again).envelope.text == "still delivered")
    }

    @Test func settlingTwiceOrAfterCloseThrows() async throws {
        let transport = try transport()
        let consumer = try await transport.consume(queue: "once")
        try await transport.send([Envelope(text: "a"), Envelope(text: "b")], to: "once")
        var iterator = consumer.makeAsyncIterator()
        let a = try #require(try await iterator.next())
        try await a.ack()
        await #expect(throws: CourierError.self) { try await a.ack() }
        await #expect(throws: CourierError.self) { try await a.nack() }
        let b = try #require(try await iterator.next())
        await consumer.close()
        do {
            try await b.ack()
            Issue.record("acking after close succeeded")
        } catch let error as CourierError {
            #expect(error.code == .deliveryAlreadySettled)
        }
        let next = try await transport.consume(queue: "once")
        #expect(try await self.next(next).envelope.id == b.envelope.id, "b went back to the queue on close")
    }

    @Test func closingIsIdempotentAndEndsIteration() async throws {
        let transport = try transport()
        let subscription = try await transport.subscribe(to: "t", group: "g")
        let iterating = Task { for try await _ in subscription {} }
        await subscription.close()
        await subscription.close()
        try await iterating.value
    }

    @Test func shutdownEndsSubscriptionsAndRefusesFurtherWork() async throws {
        let transport = try transport()
        let subscription = try await transport.subscribe(to: "t", group: "g")
        let iterating = Task { for try await _ in subscription {} }
        try await transport.shutdown()
        try await transport.shutdown()
        try await iterating.value
        do {
            try await transport.publish(Envelope(text: "late"), to: "t")
            Issue.record("publish after shutdown succeeded")
        } catch let error as CourierError {
            #expect(error.code == .transportClosed)
        }
    }

    @Test func transportsOnOneBrokerShareItsQueuesAndOutliveEachOther() async throws {
        let broker = try InMemoryBroker()
        let sender = InMemoryTransport(broker: broker)
        try await sender.send(Envelope(text: "kept"), to: "shared")
        try await sender.shutdown()
        let receiver = InMemoryTransport(broker: broker)
        #expect(try await next(try await receiver.consume(queue: "shared")).envelope.text == "kept")
    }

    @Test func namedBrokersAreSharedAcrossURLs() async throws {
        let name = "test-\(MessageID.random().prefix(8))"
        guard case .memory(let one) = try TransportURL("memory://\(name)"), case .memory(let two) = try TransportURL("memory://\(name)")
        else {
            Issue.record("not memory")
            return
        }
        try await one.makeTransport().send(Envelope(text: "hello"), to: "q")
        #expect(try await next(try await two.makeTransport().consume(queue: "q")).envelope.text == "hello")
    }

    @Test func withoutRetentionReplayIsRefusedAtSubscribe() async throws {
        let transport = try transport { $0.retention = 0 }
        #expect(!transport.capabilities.replay)
        do {
            _ = try await transport.subscribe(to: "t", group: "g", options: SubscriptionOptions(startPosition: .earliest))
            Issue.record("subscribing at earliest succeeded")
        } catch let error as CourierError {
            #expect(error.code == .unsupportedCapability)
        }
        await #expect(throws: CourierError.self) { try await transport.rewind(topic: "t", group: "g", to: .earliest) }
    }

    @Test func retentionKeepsOnlyTheNewestEvents() async throws {
        let transport = try transport { $0.retention = 5 }
        try await transport.publish((0..<10).map { Envelope(text: "\($0)") }, to: "log")
        let late = try await transport.subscribe(to: "log", group: "late", options: SubscriptionOptions(startPosition: .earliest))
        var texts: [String] = []
        for try await delivery in late {
            texts.append(delivery.envelope.text!)
            try await delivery.ack()
            if texts.count == 5 { await late.close() }
        }
        #expect(texts == ["5", "6", "7", "8", "9"])
    }

    @Test func rewindingAnUnknownGroupSaysHowToStartOne() async throws {
        let transport = try transport()
        do {
            try await transport.rewind(topic: "t", group: "never", to: .earliest)
            Issue.record("rewind succeeded")
        } catch let error as CourierError {
            #expect(error.code == .invalidConfiguration)
            #expect(error.message.contains("start position"))
        }
    }

    @Test func aDeadLetterQueueThatRefusesKeepsTheMessageInItsQueue() async throws {
        let transport = try transport {
            $0.queueCapacity = 1; $0.overflow = .reject
        }
        try await transport.send(Envelope(text: "first poison"), to: "jobs")
        let consumer = try await transport.consume(queue: "jobs")
        var iterator = consumer.makeAsyncIterator()
        try await iterator.next()!.deadLetter(reason: "bad")
        try await transport.send(Envelope(text: "second poison"), to: "jobs")
        let second = try #require(try await iterator.next())
        await #expect(throws: CourierError.self) { try await second.deadLetter(reason: "bad") }
        #expect(transport.broker.depth(ofQueue: "jobs") == 1, "refused by the full dead-letter queue, so kept")
        #expect(try await iterator.next()?.envelope.text == "second poison")
    }

    @Test func oversizedPayloadsAreRefusedBeforeAnythingIsStored() async throws {
        let transport = try transport { $0.maxPayloadSize = 10 }
        let batch = [Envelope(payload: [UInt8](repeating: 1, count: 10)), Envelope(payload: [UInt8](repeating: 1, count: 11))]
        await #expect(throws: CourierError.self) { try await transport.send(batch, to: "q") }
        #expect(transport.broker.depth(ofQueue: "q") == 0, "a batch with an oversized message stores nothing")
    }

    @Test func invalidConfigurationIsRefused() {
        #expect(throws: CourierError.self) {
            try InMemoryBroker(
                configuration: {
                    var c = InMemoryBroker.Configuration(); c.queueCapacity = 0; return c
                }())
        }
        #expect(throws: CourierError.self) {
            try InMemoryBroker(
                configuration: {
                    var c = InMemoryBroker.Configuration(); c.retention = -1; return c
                }())
        }
    }
}

/// A counter shared between a test and the tasks it starts.
final class Counter: Sendable {
    private let value_ = LockedValue(0)
    func increment() { value_.update { $0 += 1 } }
    var value: Int { value_.get() }
}

final class LockedValue<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>
    init(_ value: Value) { mutex = Mutex(value) }
    func update(_ body: (inout Value) -> Void) { mutex.withLock { body(&$0) } }
    func get() -> Value { mutex.withLock { $0 } }
}
