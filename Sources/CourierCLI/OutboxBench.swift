import ArgumentParser
import Courier
import CourierBus
import CourierOutbox
import Foundation
import Logging
import Synchronization

/// `courier bench --outbox STORE`: the outbox and the inbox against direct publishing, in one
/// run on one transport.
///
/// 1. direct: `--messages` events of `--size` bytes published through the bus in batches of
///    500 (what the relay does with a claimed batch);
/// 2. relay: as many events committed into the outbox (500 per transaction, not timed), then
///    one relay publishes them all: throughput and client CPU, and the ratio to direct;
/// 3. latency: one event per transaction at `--rate` (default 1,000/s) for `--duration`
///    seconds (default 5), from just before its commit to its delivery to a consumer, in an
///    HdrHistogram — an upper bound of commit-to-broker;
/// 4. inbox: `--messages` commands handled by an empty handler, then by an empty handler
///    through the inbox: client CPU per message of each and the difference.
extension Bench {
    struct OutboxEvent: IntegrationEvent {
        static var topic: String { OutboxBenchNames.topic.withLock { $0 } }
        static var messageName: String { "OutboxBenchEvent" }
        var n: Int
        /// When the event was written, in nanoseconds of this process's monotonic clock.
        var written: UInt64
        var data: String
        var messageKey: String? { "k\(n % 64)" }
    }

    struct InboxCommand: IntegrationCommand {
        static var queue: String { OutboxBenchNames.queue.withLock { $0 } }
        static var messageName: String { "OutboxBenchCommand" }
        var n: Int
    }

    struct OutboxReport: Codable {
        var transport: String
        var store: String
        var messages: Int
        var size: Int
        var directPerSecond: Double
        var directCPUMicros: Double
        var relayPerSecond: Double
        var relayCPUMicros: Double
        var relayToDirect: Double
        var latencyRate: Double
        var latency: LatencySummary
        var handlerCPUMicros: Double
        var inboxHandlerCPUMicros: Double
        var inboxCPUMicros: Double { inboxHandlerCPUMicros - handlerCPUMicros }
    }

    func runOutbox(_ store: String) async throws {
        let run = UInt32.random(in: 0...UInt32.max)
        let location =
            store == "sqlite" ? FileManager.default.temporaryDirectory.appendingPathComponent("courier-bench-\(run).sqlite").path : store
        defer {
            if store == "sqlite" { for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: location + suffix) } }
        }
        var logger = Logger(label: "courier.bench.outbox")
        logger.logLevel = .critical
        let bus = MessageBus(transport: try await transportOptions.connect(), configuration: .init(source: "/bench", logger: logger))
        let database = try await ServiceDatabases.open(location, prefix: "bench\(run)", bus: bus)
        do {
            let report = try await outboxReport(bus: bus, database: database, run: run)
            try await bus.shutdown()
            await database.close()
            print(json ? try Self.json(report) : report.text)
        } catch {
            try? await bus.shutdown()
            await database.close()
            throw error
        }
    }

    private static func json(_ report: OutboxReport) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return String(decoding: try encoder.encode(report), as: UTF8.self)
    }

    private func events(_ range: Range<Int>, data: String) -> [OutboxEvent] {
        range.map { OutboxEvent(n: $0, written: DispatchTime.now().uptimeNanoseconds, data: data) }
    }

    private func outboxReport(bus: MessageBus, database: any ServiceDatabase, run: UInt32) async throws -> OutboxReport {
        OutboxBenchNames.topic.withLock { $0 = "courier-bench-outbox-\(run)" }
        OutboxBenchNames.queue.withLock { $0 = "courier-bench-inbox-\(run)" }
        // A group exists before anything is published (a topic without groups drops events);
        // it reads only during the latency phase.
        let consumer = MessageBus(transport: try await transportOptions.connect(), configuration: bus.configuration)
        do {
            let report = try await outboxReport(bus: bus, consumer: consumer, database: database)
            try await consumer.shutdown()
            return report
        } catch {
            try? await consumer.shutdown()
            throw error
        }
    }

    private func outboxReport(bus: MessageBus, consumer: MessageBus, database: any ServiceDatabase) async throws -> OutboxReport {
        let total = messages
        let data = String(repeating: "x", count: max(0, size - 40))  // the JSON around it is ~40 bytes
        let latencies = LatencyRecorder()
        let measuring = Atomic(false)
        let delivered = Atomic(0)
        try await consumer.subscribe(to: OutboxEvent.self, group: "latency", options: HandlerOptions(prefetch: 1000)) { event, _ in
            guard measuring.load(ordering: .relaxed) else { return }
            latencies.record(nanoseconds: DispatchTime.now().uptimeNanoseconds - event.written)
            delivered.add(1, ordering: .relaxed)
        }

        // 1. Direct publishing, in batches of 500.
        var cpu = ProcessCPU.seconds()
        var start = ContinuousClock.now
        for batch in stride(from: 0, to: total, by: 500) {
            try await bus.publish(events(batch..<min(total, batch + 500), data: data))
        }
        let direct = (seconds: (ContinuousClock.now - start).seconds, cpu: ProcessCPU.seconds() - cpu)

        // 2. The same events committed into the outbox, then relayed.
        for batch in stride(from: 0, to: total, by: 500) {
            try await database.stage(events(batch..<min(total, batch + 500), data: data))
        }
        var options = OutboxRelay.Options()
        options.logger = Logger(label: "courier.bench.relay")
        options.logger.logLevel = .critical
        options.housekeepingInterval = .seconds(3600)
        let relay = database.relay(options: options)
        cpu = ProcessCPU.seconds()
        start = ContinuousClock.now
        let relaying = Task { try await relay.run() }
        while relay.statistics.published < total {
            try await Task.sleep(for: .milliseconds(2))
            if ContinuousClock.now - start > .seconds(600) {
                throw CourierError(.timeout, "the relay published \(relay.statistics.published) of \(total) in 600 s")
            }
        }
        let relayed = (seconds: (ContinuousClock.now - start).seconds, cpu: ProcessCPU.seconds() - cpu)

        // 3. Latency at a steady rate, one event per transaction, the relay still running.
        let rate = self.rate ?? 1000
        let seconds = duration ?? 5
        let count = max(1, Int(rate * seconds))
        try await Task.sleep(for: .milliseconds(500))  // the backlog of phase 2 drained by the consumer unmeasured
        measuring.store(true, ordering: .relaxed)
        let interval = 1e9 / rate
        var due = DispatchTime.now().uptimeNanoseconds
        for n in 0..<count {
            due += UInt64(interval)
            let now = DispatchTime.now().uptimeNanoseconds
            if due > now { try await Task.sleep(for: .nanoseconds(Int(due - now))) }
            try await database.stage(events(n..<(n + 1), data: data))
        }
        let latencyDeadline = ContinuousClock.now + .seconds(60)
        while delivered.load(ordering: .relaxed) < count, ContinuousClock.now < latencyDeadline {
            try await Task.sleep(for: .milliseconds(10))
        }
        relaying.cancel()
        _ = try? await relaying.value

        // 4. The inbox's cost: the same commands handled without, then with it.
        let plain = try await handlingCPU(bus: bus, database: nil, total: total)
        let inbox = try await handlingCPU(bus: bus, database: database, total: total)

        return OutboxReport(
            transport: TransportURL.redacted(transportOptions.url), store: database.location, messages: total, size: size,
            directPerSecond: Double(total) / direct.seconds, directCPUMicros: direct.cpu / Double(total) * 1e6,
            relayPerSecond: Double(total) / relayed.seconds, relayCPUMicros: relayed.cpu / Double(total) * 1e6,
            relayToDirect: direct.seconds / relayed.seconds, latencyRate: rate, latency: latencies.summary(),
            handlerCPUMicros: plain, inboxHandlerCPUMicros: inbox)
    }

    /// Client CPU µs per command for `total` commands handled by an empty handler, through
    /// `database`'s inbox when given.
    private func handlingCPU(bus: MessageBus, database: (any ServiceDatabase)?, total: Int) async throws -> Double {
        OutboxBenchNames.queue.withLock { $0 = "courier-bench-inbox-\(UInt32.random(in: 0...UInt32.max))" }
        for batch in stride(from: 0, to: total, by: 500) {
            try await bus.send((batch..<min(total, batch + 500)).map { InboxCommand(n: $0) })
        }
        let handled = Atomic(0)
        let cpu = ProcessCPU.seconds()
        let handler = MessageBus(transport: try await transportOptions.connect(), configuration: bus.configuration)
        let options = HandlerOptions(prefetch: prefetchOption)
        if let database {
            try await database.handle(InboxCommand.self, bus: handler, options: options) { _ in handled.add(1, ordering: .relaxed) }
        } else {
            try await handler.handle(InboxCommand.self, options: options) { _, _ in handled.add(1, ordering: .relaxed) }
        }
        let start = ContinuousClock.now
        while handled.load(ordering: .relaxed) < total {
            try await Task.sleep(for: .milliseconds(2))
            if ContinuousClock.now - start > .seconds(600) {
                throw CourierError(.timeout, "handled \(handled.load(ordering: .relaxed)) of \(total) in 600 s")
            }
        }
        try await handler.shutdown()
        return (ProcessCPU.seconds() - cpu) / Double(total) * 1e6
    }
}

extension Bench.OutboxReport {
    var text: String {
        """
        courier bench --outbox — \(transport) — \(store) — \(messages) events of \(size) bytes
          direct publish (batches of 500)   \(Int(directPerSecond)) msg/s   \(String(format: "%.2f", directCPUMicros)) µs CPU/msg
          outbox relay                      \(Int(relayPerSecond)) msg/s   \(String(format: "%.2f", relayCPUMicros)) µs CPU/msg   \(String(format: "%.2f", relayToDirect))× direct
          commit to delivery at \(Int(latencyRate))/s     \(latency.text)
          handler CPU                       \(String(format: "%.2f", handlerCPUMicros)) µs/msg plain, \(String(format: "%.2f", inboxHandlerCPUMicros)) µs/msg with the inbox (+\(String(format: "%.2f", inboxCPUMicros)) µs, client only)
        """
    }
}

enum OutboxBenchNames {
    static let topic = Mutex("courier-bench-outbox")
    static let queue = Mutex("courier-bench-inbox")
}
