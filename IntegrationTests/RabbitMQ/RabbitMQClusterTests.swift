import Courier
import CourierRabbitMQ
import Foundation
import Synchronization
import Testing

/// The 3-node cluster `scripts/rabbitmq-cluster` runs on 127.0.0.1 (scripts/test starts it).
/// Tests that need it fail, never skip, when it is not up.
enum RabbitMQCluster {
    static let nodes = [1, 2, 3]

    static var script: String { RabbitMQBroker.repositoryRoot.path + "/scripts/rabbitmq-cluster" }

    static var basePort: Int {
        ProcessInfo.processInfo.environment["COURIER_CLUSTER_PORT"].flatMap(Int.init) ?? 5680
    }

    /// Settings naming every node, the first one tried being `first`, in order, with quorum
    /// queues (the queue type a cluster's messages survive a node on).
    static func settings(startingAt first: Int) -> AMQPSettings {
        var settings = AMQPSettings()
        let order = nodes[(first - 1)...] + nodes[..<(first - 1)]
        settings.hosts = order.map { AMQPSettings.Endpoint(host: "127.0.0.1", port: basePort + $0) }
        settings.hostOrder = .inOrder
        settings.queueType = .quorum
        settings.connectionTimeoutSeconds = 5
        return settings
    }

    /// Runs `scripts/rabbitmq-cluster ARGUMENTS` (kill N, start N, restart N, status).
    static func run(_ arguments: String) async throws {
        try await RabbitMQBroker.run("\(script) \(arguments) >/dev/null")
    }

    /// Fails with what to do when a node is down.
    static func requireUp() async throws {
        do {
            try await run("status")
        } catch {
            throw CourierError(.unreachable, "the RabbitMQ test cluster is not up; start it with scripts/rabbitmq-cluster start")
        }
    }
}

extension BrokerIntegration.RabbitMQIntegration {
    /// Issue 16's fault tests: messages keep flowing through quorum queues while cluster nodes
    /// are killed or restarted; every confirmed message arrives. Faults are triggered by counts
    /// of confirmed messages, never by time.
    @Suite("RabbitMQ cluster")
    struct RabbitMQClusterTests {
        /// What one run saw.
        struct Report: CustomStringConvertible {
            var confirmed = 0
            var received = 0
            var duplicates = 0
            var missing = 0
            var publishRetries = 0

            var description: String {
                "\(confirmed) confirmed, \(received) received, \(missing) missing, \(duplicates) duplicates, \(publishRetries) publish retries"
            }
        }

        /// A fault: once `after` pairs (one command and one event each) are confirmed, run
        /// `scripts/rabbitmq-cluster` with each of `commands` in turn. The publisher goes on
        /// while it runs, up to `window` pairs beyond `after`.
        struct Fault {
            var after: Int
            var commands: [String]
        }

        private final class Progress: Sendable {
            struct State {
                var confirmedPairs = 0
                var budget = 0
                var confirmed = Set<String>()
                var received = Set<String>()
                var duplicates = 0
                var publishRetries = 0
            }
            let state = Mutex(State())
        }

        /// `pairs` commands to a quorum command queue and as many events to a quorum group
        /// queue, published in batches through a transport whose first node is 1 and consumed
        /// through one whose first node is 2, with `faults` injected along the way.
        private func stream(pairs: Int, window: Int, faults: [Fault]) async throws -> Report {
            try await RabbitMQCluster.requireUp()
            let suffix = MessageID.random().prefix(8).lowercased()
            let queue = "cluster-test-commands-\(suffix)"
            let topic = "cluster-test-events-\(suffix)"
            let group = "cluster-test-group-\(suffix)"
            let publisher = try await RabbitMQTransport.connect(.init(settings: RabbitMQCluster.settings(startingAt: 1)))
            let consumer = try await RabbitMQTransport.connect(.init(settings: RabbitMQCluster.settings(startingAt: 2)))
            let commands = try await consumer.consume(queue: queue)
            let events = try await consumer.subscribe(to: topic, group: group)
            let progress = Progress()
            progress.state.withLock { $0.budget = min(pairs, (faults.first?.after ?? pairs) + window) }

            let consuming = [commands, events].map { subscription in
                Task {
                    for try await delivery in subscription {
                        progress.state.withLock {
                            if !$0.received.insert(delivery.envelope.id).inserted { $0.duplicates += 1 }
                        }
                        // An ack lost with its node is redelivered: a duplicate, counted.
                        try? await delivery.ack()
                    }
                }
            }
            let injecting = Task {
                for (index, fault) in faults.enumerated() {
                    while progress.state.withLock({ $0.confirmedPairs }) < fault.after { try await Task.sleep(for: .milliseconds(10)) }
                    for command in fault.commands { try await RabbitMQCluster.run(command) }
                    let next = index + 1 < faults.count ? faults[index + 1].after + window : pairs
                    progress.state.withLock { $0.budget = min(pairs, next) }
                }
                progress.state.withLock { $0.budget = pairs }
            }

            var next = 0
            while next < pairs {
                let budget = progress.state.withLock { $0.budget }
                if next >= budget {
                    try await Task.sleep(for: .milliseconds(10))
                    continue
                }
                let range = next..<min(next + 50, budget)
                let batchOfCommands = range.map { Envelope(text: "command \($0)") }
                let batchOfEvents = range.map { Envelope(text: "event \($0)") }
                try await retrying(progress) { try await publisher.send(batchOfCommands, to: queue) }
                try await retrying(progress) { try await publisher.publish(batchOfEvents, to: topic) }
                progress.state.withLock {
                    $0.confirmed.formUnion((batchOfCommands + batchOfEvents).map(\.id))
                    $0.confirmedPairs = range.upperBound
                }
                next = range.upperBound
            }
            try await injecting.value

            // Every confirmed message, within two minutes of the last confirm.
            let deadline = ContinuousClock.now + .seconds(120)
            while ContinuousClock.now < deadline, !progress.state.withLock({ $0.confirmed.isSubset(of: $0.received) }) {
                try await Task.sleep(for: .milliseconds(50))
            }
            await commands.close()
            await events.close()
            for task in consuming {
                if case .failure(let error) = await task.result, !(error is CancellationError) {
                    Issue.record("a subscription failed instead of resuming on another node: \(error)")
                }
            }
            try await publisher.shutdown()
            try await consumer.shutdown()
            return progress.state.withLock {
                Report(
                    confirmed: $0.confirmed.count, received: $0.received.count, duplicates: $0.duplicates,
                    missing: $0.confirmed.subtracting($0.received).count, publishRetries: $0.publishRetries)
            }
        }

        /// A batch that fails while the transport moves to another node is sent again, as a
        /// service would: its messages may arrive twice, never not at all.
        private func retrying(_ progress: Progress, _ body: () async throws -> Void) async throws {
            let deadline = ContinuousClock.now + .seconds(120)
            while true {
                do {
                    return try await body()
                } catch let error as CourierError where error.isRetriable && ContinuousClock.now < deadline {
                    progress.state.withLock { $0.publishRetries += 1 }
                    try await Task.sleep(for: .milliseconds(200))
                }
            }
        }

        /// 20,000 persistent messages; `kill -9` of the publisher's node, which comes back,
        /// then of the consumer's node (the other two keep each quorum queue's majority).
        @Test func killingThePublishersNodeThenTheConsumersLosesNothingConfirmed() async throws {
            let report = try await stream(
                pairs: 10_000, window: 2_000,
                faults: [
                    Fault(after: 2_000, commands: ["kill 1", "start 1"]),
                    Fault(after: 5_000, commands: ["kill 2", "start 2"]),
                ])
            print("RabbitMQ cluster, kill -9 of the publisher's then the consumer's node: \(report)")
            #expect(report.confirmed == 20_000)
            #expect(report.missing == 0, "every confirmed message delivered: \(report)")
        }

        /// Two rolling restarts of all three nodes while 10,000 messages flow.
        @Test func twoRollingRestartsLoseNothingConfirmed() async throws {
            let restarts = (0..<6).map { Fault(after: $0 * 600, commands: ["restart \($0 % 3 + 1)"]) }
            let report = try await stream(pairs: 5_000, window: 600, faults: restarts)
            print("RabbitMQ cluster, two rolling restarts: \(report)")
            #expect(report.confirmed == 10_000)
            #expect(report.missing == 0, "every confirmed message delivered: \(report)")
        }
    }
}
