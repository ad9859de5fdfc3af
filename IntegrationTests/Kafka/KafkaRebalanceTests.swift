import Courier
import CourierBus
@_spi(Testing) import CourierKafka
import Foundation
import Testing

protocol NumberedCommand: IntegrationCommand {
    var n: Int { get }
}

/// The group member where users meet it: a bus handler with default options over a backlog,
/// back-pressure, and consumers joining and leaving during a stream.
extension BrokerIntegration.KafkaIntegration {
    @Suite("Kafka rebalances and flow")
    struct KafkaRebalanceTests {
        struct BacklogCommand: NumberedCommand {
            static let queue = "kafka-backlog-\(MessageID.random().prefix(8).lowercased())"
            var n: Int
        }

        struct SmallBufferCommand: NumberedCommand {
            static let queue = "kafka-small-buffer-\(MessageID.random().prefix(8).lowercased())"
            var n: Int
        }

        /// Sends `count` commands, then lets a default bus handler drain them; returns how many
        /// times each was handled.
        private func drain<C: NumberedCommand>(
            _ type: C.Type, _ count: Int, configure: (inout KafkaTransport.Configuration) -> Void = { _ in }
        ) async throws -> (handled: [Int: Int], statistics: KafkaConsumerStatistics) {
            var configuration = try KafkaTransport.Configuration(url: KafkaBroker.url())
            configure(&configuration)
            let transport = try await KafkaTransport.connect(configuration)
            let queue = C.queue
            let commands = (0..<count).map {
                Envelope(payload: Array("{\"n\":\($0)}".utf8), headers: [CourierHeader.contentType: "application/json"])
            }
            for start in stride(from: 0, to: count, by: 500) {
                try await transport.send(Array(commands[start..<min(count, start + 500)]), to: queue)
            }
            let bus = MessageBus(transport: transport, configuration: .init(source: "/test"))
            let handled = Shared([Int: Int]())
            try await bus.handle(C.self) { command, _ in
                handled.withLock { $0[command.n, default: 0] += 1 }
            }
            var last = (count: 0, at: ContinuousClock.now)
            while handled.withLock({ $0.count }) < count {
                try await Task.sleep(for: .milliseconds(20))
                let now = handled.withLock { $0.count }
                if now != last.count { last = (now, .now) } else if ContinuousClock.now - last.at > .seconds(30) { break }
            }
            try await bus.shutdown()
            let statistics = transport.consumerStatistics
            try await transport.shutdown()
            return (handled.withLock { $0 }, statistics)
        }

        /// Default `HandlerOptions` (concurrency 1): the member fetches ahead of the handler and
        /// never pauses for a backlog below its buffer bound. (It used to pause all its
        /// partitions whenever the prefetch was reached: ~60 pauses here, each dropping what
        /// librdkafka had fetched.)
        @Test func aDefaultHandlerDrainsABacklogWithoutPausingPerMessage() async throws {
            let (handled, statistics) = try await drain(BacklogCommand.self, 1_000)
            print("[kafka flow] 1,000-command backlog, default handler: \(handled.count) handled; \(statistics)")
            #expect(
                handled.count == 1_000 && handled.values.allSatisfy { $0 == 1 },
                "\(handled.count) of 1,000 handled, \(handled.values.filter { $0 > 1 }.count) twice")
            #expect(statistics.pauses == 0)
        }

        /// With a buffer of 100 messages the member pauses as back-pressure — about once per 50
        /// messages handled (it resumes at half), never per message — and loses nothing.
        @Test func aSmallBufferPausesAsBackPressureOnly() async throws {
            let (handled, statistics) = try await drain(SmallBufferCommand.self, 1_000) { $0.bufferedMessages = 100 }
            print("[kafka flow] 1,000-command backlog, buffer of 100: \(handled.count) handled; \(statistics)")
            #expect(handled.count == 1_000 && handled.values.allSatisfy { $0 == 1 })
            #expect(statistics.pauses >= 1, "the buffer bound was never reached")
            #expect(statistics.pauses <= 1_000 / 50 + 1, "paused \(statistics.pauses) times for 1,000 messages")
        }

        /// Three consumers of one queue leave and rejoin in turn, a change every 2 s,
        /// while 50,000 commands stream in: nothing lost, and the duplicates a rebalance costs stay
        /// within what was handed out and unsettled when partitions moved.
        @Test func churnLosesNothingAndDuplicatesLittle() async throws {
            let queue = "kafka-churn-\(MessageID.random().prefix(8).lowercased())"
            try KafkaBroker.mock?.createTopic(queue, partitions: 12)
            let total = 50_000
            let producer = try await KafkaBroker.connect("partitions=12")
            let consumers = [try await KafkaBroker.connect(), try await KafkaBroker.connect(), try await KafkaBroker.connect()]
            // Per acked message: the sessions that acked it.
            let acked = Shared([String: [Int]]())
            let refused = Shared(0)
            let sessions = Shared(0)

            /// One consumer session: reads and acks until its subscription closes.
            @Sendable func session(_ subscription: Subscription, _ id: Int) async throws {
                for try await delivery in subscription {
                    do {
                        try await delivery.ack()
                        acked.withLock { $0[delivery.envelope.id, default: []].append(id) }
                    } catch let error as CourierError where error.code == .deliveryAlreadySettled {
                        // The subscription closed under it: the message went back, unacked.
                        refused.withLock { $0 += 1 }
                    }
                }
            }

            let produced = Shared(false)
            let sent = (0..<total).map { Envelope(payload: Array("churn \($0)".utf8), key: "k\($0 % 997)") }
            try await withThrowingTaskGroup(of: Void.self) { group in
                // The producer: 200 batches of 250, five a second.
                group.addTask {
                    for start in stride(from: 0, to: total, by: 250) {
                        try await producer.send(Array(sent[start..<start + 250]), to: queue)
                        try await Task.sleep(for: .milliseconds(200))
                    }
                    produced.withLock { $0 = true }
                }
                // The consumers join one by one; then, while the stream lasts, every 4 s one of
                // them leaves and rejoins 2 s later (each change is a rebalance of its own).
                group.addTask {
                    var open: [Subscription?] = [nil, nil, nil]
                    var running: [Task<Void, any Error>?] = [nil, nil, nil]
                    func start(_ slot: Int) async throws {
                        let subscription = try await consumers[slot].consume(queue: queue)
                        let id = sessions.withLock {
                            $0 += 1; return $0
                        }
                        open[slot] = subscription
                        running[slot] = Task { try await session(subscription, id) }
                    }
                    for slot in 0..<3 {
                        try await start(slot)
                        try await Task.sleep(for: .seconds(2))
                    }
                    var changes = 0
                    var slot = 0
                    while !produced.withLock({ $0 }) {
                        await open[slot]?.close()
                        try await running[slot]?.value
                        try await Task.sleep(for: .seconds(2))
                        try await start(slot)
                        changes += 1
                        slot = (slot + 1) % 3
                        try await Task.sleep(for: .seconds(2))
                    }
                    let deadline = ContinuousClock.now + .seconds(60)
                    while acked.withLock({ $0.count }) < total && ContinuousClock.now < deadline {
                        try await Task.sleep(for: .milliseconds(100))
                    }
                    for index in 0..<3 {
                        await open[index]?.close()
                        try await running[index]?.value
                    }
                    print("[kafka churn] \(changes) times a consumer left and rejoined")
                }
                try await group.waitForAll()
            }
            var statistics = KafkaConsumerStatistics()
            for consumer in consumers {
                statistics = statistics + consumer.consumerStatistics
                try await consumer.shutdown()
            }
            try await producer.shutdown()
            let record = acked.withLock { $0 }
            let lost = sent.filter { record[$0.id] == nil }.count
            let duplicates = record.values.reduce(0) { $0 + $1.count - 1 }
            let sameSession = record.values.filter { Set($0).count < $0.count }.count
            let refusedCount = refused.withLock { $0 }
            print(
                "[kafka churn] \(total) sent, \(record.count) acked, \(lost) lost, \(duplicates) duplicates (\(String(format: "%.2f", Double(duplicates) * 100 / Double(total)))%), \(sameSession) twice to one session; \(sessions.withLock { $0 }) sessions, \(refusedCount) acks refused at close; \(statistics)"
            )
            #expect(lost == 0)
            #expect(statistics.revokes >= 6, "the consumers did not churn")
            // What a rebalance may deliver again: deliveries unsettled at the revoke timeout or
            // handed back at a close, and — where the broker refused the commit on revoke, as the
            // mock cluster does while a group is joining — what was handed out beyond the last
            // commit it confirmed.
            let inFlight = statistics.abandonedOnRevoke + statistics.exposedOnRevoke + refusedCount
            #expect(duplicates <= inFlight, "\(duplicates) duplicates, more than the \(inFlight) in flight when partitions moved")
            if KafkaBroker.mock == nil {
                // A broker that takes commits during a rebalance (Apache Kafka) leaves only what
                // was unsettled at the revoke timeout.
                #expect(duplicates * 50 < total, "duplicates must stay under 2%")
            }
        }
    }
}
