import ArgumentParser
import Courier
import CourierBus
import Foundation
import Logging
import Synchronization

/// `courier bench --bus`: the bus end to end against the transport alone, in the same run.
///
/// Each run publishes and consumes at once on a fresh command queue: `--publishers` publishers
/// send `--messages` commands in calls of `--batch` while one consumer takes them.
/// - `transport`: envelopes through `Transport.send` and a consumer acking each — the
///   transport's own cost, the baseline.
/// - `bus`: typed commands through `MessageBus.send` (encode, type, ids, span, metrics) and a
///   `MessageBus` handler with default options (decode, handle, ack) — every hop a service pays.
/// - with `--poison P`, a third run where P% of the messages are invalid JSON (sent as raw
///   envelopes), which the bus dead-letters.
///
/// Rates run from the first handled message to the last (a Kafka group join is not counted);
/// CPU and allocations run from the first publish, so they include publishing. The report
/// gives the bus's throughput as a ratio of the transport's and its CPU per message over it.
extension Bench {
    /// The benchmark's command; its queue is renamed per run.
    struct BenchCommand: IntegrationCommand {
        var n: Int
        static var queue: String { BusBenchQueue.name.withLock { $0 } }
    }

    struct BusRun: Encodable {
        var label: String
        var messages: Int
        var poisoned: Int
        var seconds: Double
        var cpuSeconds: Double
        var allocations: UInt64
        var messagesPerSecond: Double { Double(messages) / seconds }
        var cpuMicrosPerMessage: Double { cpuSeconds / Double(messages) * 1e6 }
        var allocationsPerMessage: Double { Double(allocations) / Double(messages) }

        enum CodingKeys: String, CodingKey {
            case label, messages, poisoned, seconds, cpuSeconds, allocations
            case messagesPerSecond, cpuMicrosPerMessage, allocationsPerMessage
        }

        func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(label, forKey: .label)
            try container.encode(messages, forKey: .messages)
            try container.encode(poisoned, forKey: .poisoned)
            try container.encode(seconds, forKey: .seconds)
            try container.encode(cpuSeconds, forKey: .cpuSeconds)
            try container.encode(allocations, forKey: .allocations)
            try container.encode(messagesPerSecond.rounded(), forKey: .messagesPerSecond)
            try container.encode((cpuMicrosPerMessage * 100).rounded() / 100, forKey: .cpuMicrosPerMessage)
            try container.encode((allocationsPerMessage * 10).rounded() / 10, forKey: .allocationsPerMessage)
        }
    }

    func runBus() async throws {
        var runs = [try await busRun(.transport), try await busRun(.bus(poisonPercent: 0))]
        if let poison { runs.append(try await busRun(.bus(poisonPercent: poison))) }
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            print(String(decoding: try encoder.encode(runs), as: UTF8.self))
            return
        }
        print(
            "courier bench --bus — \(TransportURL.redacted(transportOptions.url)) — \(messages) commands; \(publishers) publisher(s), calls of \(batch); handler with default options"
        )
        for run in runs {
            let label = run.label.padding(toLength: 10, withPad: " ", startingAt: 0)
            var line = String(
                format: "%9d msg/s  %7.2f µs CPU/msg", Int(run.messagesPerSecond), run.cpuMicrosPerMessage)
            if Allocations.available { line += String(format: "  %6.1f allocations/msg", run.allocationsPerMessage) }
            if run.poisoned > 0 { line += "  (\(run.poisoned) dead-lettered)" }
            print("  " + label + line)
        }
        let (transport, bus) = (runs[0], runs[1])
        print(
            String(
                format: "  the bus at %.2f× the transport's throughput, %.2f µs CPU/msg over it",
                bus.messagesPerSecond / transport.messagesPerSecond,
                bus.cpuMicrosPerMessage - transport.cpuMicrosPerMessage))
        if runs.count == 3 {
            print(
                String(
                    format: "  poisoned run at %.0f%% of the clean run's throughput",
                    runs[2].messagesPerSecond / bus.messagesPerSecond * 100))
        }
    }

    enum BusRunKind {
        case transport
        case bus(poisonPercent: Double)
    }

    private func busRun(_ kind: BusRunKind) async throws -> BusRun {
        let queue = "courier-bench-bus-\(UInt32.random(in: 0...UInt32.max))"
        BusBenchQueue.name.withLock { $0 = queue }
        let total = messages
        let poisonPercent: Double
        if case .bus(let percent) = kind { poisonPercent = percent } else { poisonPercent = 0 }
        // Every k-th message is poison, never the last.
        let every = poisonPercent > 0 ? max(1, Int((100 / poisonPercent).rounded())) : 0
        let isPoison: @Sendable (Int) -> Bool = { index in every > 0 && index % every == every - 1 && index < total - 1 }
        let poisoned = (0..<total).reduce(0) { $0 + (isPoison($1) ? 1 : 0) }
        let transport = try await transportOptions.connect()
        var logger = Logger(label: "courier.bench.bus")
        logger.logLevel = .critical  // the library's cost, not the terminal's
        let bus = MessageBus(transport: transport, configuration: .init(source: "/bench", logger: logger))
        let handled = Atomic<Int>(0)
        let expected = total - poisoned
        let cpuStart = ProcessCPU.seconds()
        let allocationsStart = Allocations.count
        // The clock starts at the first handled message: a Kafka group's join (seconds on a
        // real cluster) is not throughput.
        let first = Mutex<ContinuousClock.Instant?>(nil)
        @Sendable func received() {
            if handled.add(1, ordering: .relaxed).oldValue == 0 { first.withLock { $0 = .now } }
        }
        var consumer: Task<Void, any Error>?
        switch kind {
        case .transport:
            let subscription = try await transport.consume(
                queue: queue, options: SubscriptionOptions(prefetch: HandlerOptions(prefetch: prefetchOption).effectivePrefetch))
            consumer = Task {
                var count = 0
                for try await delivery in subscription {
                    try await delivery.ack()
                    received()
                    count += 1
                    if count == total { break }
                }
                await subscription.close()
            }
        case .bus:
            try await bus.handle(BenchCommand.self, options: HandlerOptions(prefetch: prefetchOption)) { _, _ in received() }
        }
        let (publishers, batch) = (self.publishers, self.batch)
        let window = confirm == .on ? 1 : max(1, inFlight / batch)
        let failed = Counter()
        let publishing = Task {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for publisher in 0..<publishers {
                    group.addTask {
                        let pipeline = PublishPipeline(window: window, failed: failed)
                        var start = publisher * batch
                        while start < total {
                            let indices = start..<min(start + batch, total)
                            switch kind {
                            case .transport:
                                let envelopes = indices.map { index in
                                    Envelope(
                                        payload: Array("{\"n\":\(index)}".utf8), headers: [CourierHeader.contentType: "application/json"])
                                }
                                try await pipeline.submit { try await transport.send(envelopes, to: queue) }
                            case .bus:
                                let commands = indices.filter { !isPoison($0) }.map { BenchCommand(n: $0) }
                                let poison = indices.filter(isPoison).map { Envelope(payload: Array("{not json \($0)".utf8)) }
                                try await pipeline.submit {
                                    if !commands.isEmpty { try await bus.send(commands) }
                                    if !poison.isEmpty { try await transport.send(poison, to: queue) }
                                }
                            }
                            start += publishers * batch
                        }
                        try await pipeline.finish()
                    }
                }
                try await group.waitForAll()
            }
        }
        var lastProgress = (count: 0, at: ContinuousClock.now)
        while handled.load(ordering: .relaxed) < expected {
            try await Task.sleep(for: .milliseconds(1))
            let count = handled.load(ordering: .relaxed)
            if count != lastProgress.count {
                lastProgress = (count, .now)
            } else if ContinuousClock.now - lastProgress.at > .seconds(30) {
                publishing.cancel()
                consumer?.cancel()
                try? await bus.shutdown()
                throw CourierError(.timeout, "\(count) of \(expected) commands were handled and then nothing for 30 s")
            }
        }
        let end = ContinuousClock.now
        let cpuEnd = ProcessCPU.seconds()
        let allocationsEnd = Allocations.count
        try await publishing.value
        try await consumer?.value
        try await bus.shutdown()  // waits for dead letters still being confirmed
        if failed.value > 0 { throw CourierError(.notConfirmed, "\(failed.value) send calls were not confirmed") }
        let label: String
        switch kind {
        case .transport: label = "transport"
        case .bus: label = poisonPercent > 0 ? "poisoned" : "bus"
        }
        return BusRun(
            label: label, messages: total, poisoned: poisoned, seconds: (end - (first.withLock { $0 } ?? end)).seconds,
            cpuSeconds: cpuEnd - cpuStart, allocations: allocationsEnd &- allocationsStart)
    }
}

enum BusBenchQueue {
    static let name = Mutex("courier-bench-bus")
}
