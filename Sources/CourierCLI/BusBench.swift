import ArgumentParser
import Courier
import CourierBus
import Foundation
import Logging
import Synchronization

/// `courier bench --bus`: the bus end to end. A command queue is filled through the transport,
/// then a `MessageBus` handler with default options drains it (decode, handle, ack); with
/// `--poison P`, P% of the messages are invalid JSON, which the bus dead-letters, and the run
/// is measured twice (clean, then poisoned) so the report shows the ratio from the same run.
/// Rates run from the first handled message (a Kafka group join is not counted); CPU includes
/// everything from the registration on.
extension Bench {
    /// The benchmark's command; its queue is renamed per run.
    struct BenchCommand: IntegrationCommand {
        var n: Int
        static var queue: String { BusBenchQueue.name.withLock { $0 } }
    }

    struct BusRun: Codable {
        var label: String
        var messages: Int
        var poisoned: Int
        var seconds: Double
        var cpuSeconds: Double
        var messagesPerSecond: Double { Double(messages) / seconds }
        var cpuMicrosPerMessage: Double { cpuSeconds / Double(messages) * 1e6 }
    }

    func runBus() async throws {
        let percent = poison ?? 0
        var runs: [BusRun] = []
        for poisoned in percent > 0 ? [false, true] : [false] {
            runs.append(try await busRun(poisonPercent: poisoned ? percent : 0))
        }
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            print(String(decoding: try encoder.encode(runs), as: UTF8.self))
            return
        }
        print(
            "courier bench --bus — \(TransportURL.redacted(transportOptions.url)) — \(messages) commands of a MessageBus handler with default options"
        )
        for run in runs {
            let label = run.label.padding(toLength: 9, withPad: " ", startingAt: 0)
            print(
                "  " + label
                    + String(
                        format: "%8d msg/s   %6.2f µs CPU/msg   (%d dead-lettered, %.3f s)", Int(run.messagesPerSecond),
                        run.cpuMicrosPerMessage, run.poisoned, run.seconds))
        }
        if runs.count == 2 {
            print(
                String(
                    format: "  poisoned run at %.0f%% of the clean run's throughput",
                    runs[1].messagesPerSecond / runs[0].messagesPerSecond * 100))
        }
    }

    private func busRun(poisonPercent: Double) async throws -> BusRun {
        let queue = "courier-bench-bus-\(UInt32.random(in: 0...UInt32.max))"
        BusBenchQueue.name.withLock { $0 = queue }
        let total = messages
        // Every k-th message is poison, never the last (the run ends when it is handled).
        let every = poisonPercent > 0 ? max(1, Int((100 / poisonPercent).rounded())) : 0
        func isPoison(_ index: Int) -> Bool { every > 0 && index % every == every - 1 && index < total - 1 }
        let transport = try await transportOptions.connect()
        var batch: [Envelope] = []
        var poisoned = 0
        for index in 0..<total {
            let poison = isPoison(index)
            if poison { poisoned += 1 }
            let payload = poison ? Array("{not json \(index)".utf8) : Array("{\"n\":\(index)}".utf8)
            batch.append(Envelope(payload: payload, headers: [CourierHeader.contentType: "application/json"]))
            if batch.count == 500 || index == total - 1 {
                try await transport.send(batch, to: queue)
                batch.removeAll(keepingCapacity: true)
            }
        }
        var logger = Logger(label: "courier.bench.bus")
        logger.logLevel = .critical  // the library's cost, not the terminal's
        let bus = MessageBus(transport: transport, configuration: .init(source: "/bench", logger: logger))
        let handled = Atomic<Int>(0)
        let clean = total - poisoned
        let cpuStart = ProcessCPU.seconds()
        // The clock starts at the first handled message: a Kafka group's join (seconds on a
        // real cluster) is not the bus's throughput.
        let first = Mutex<ContinuousClock.Instant?>(nil)
        try await bus.handle(BenchCommand.self, options: HandlerOptions(prefetch: prefetchOption)) { _, _ in
            if handled.add(1, ordering: .relaxed).oldValue == 0 { first.withLock { $0 = .now } }
        }
        var lastProgress = (count: 0, at: ContinuousClock.now)
        while handled.load(ordering: .relaxed) < clean {
            try await Task.sleep(for: .milliseconds(1))
            let count = handled.load(ordering: .relaxed)
            if count != lastProgress.count {
                lastProgress = (count, .now)
            } else if ContinuousClock.now - lastProgress.at > .seconds(30) {
                try? await bus.shutdown()
                throw CourierError(.timeout, "the bus handled \(count) of \(clean) commands and then nothing for 30 s")
            }
        }
        try await bus.shutdown()  // waits for dead letters still being confirmed
        let seconds = (ContinuousClock.now - (first.withLock { $0 } ?? .now)).seconds
        return BusRun(
            label: poisonPercent > 0 ? "poisoned" : "clean", messages: total, poisoned: poisoned, seconds: seconds,
            cpuSeconds: ProcessCPU.seconds() - cpuStart)
    }
}

enum BusBenchQueue {
    static let name = Mutex("courier-bench-bus")
}
