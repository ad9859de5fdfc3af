import ArgumentParser
import Courier
import Foundation
import Synchronization

/// A load generator: publishers and acking consumers on one topic and group, end to end.
struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure end-to-end throughput: publishers → topic → group of acking consumers.",
        discussion: """
            Publishers and consumers run at once; throughput is messages acked per second from \
            the first publish to the last ack.

            Examples:
              courier bench --messages 1000000 --size 256
              courier bench --publishers 4 --consumers 4 --json
            """
    )

    @OptionGroup var transportOptions: TransportOptions

    @Option(help: "How many messages to publish in all.")
    var messages: Int = 1_000_000

    @Option(help: "Payload size in bytes.")
    var size: Int = 256

    @Option(help: "Concurrent publishers.")
    var publishers: Int = 1

    @Option(help: "Competing consumers in one group.")
    var consumers: Int = 1

    @Option(help: "Un-acked deliveries per consumer.")
    var prefetch: Int = 256

    @Flag(help: "Print the report as JSON.")
    var json = false

    @Flag(help: "Run two phases on a command queue instead: publish everything (confirmed), then consume everything (acking each). For comparisons with the raw C clients.")
    var phases = false

    @Option(help: "With --phases: messages per send call; publishers × batch messages are in flight.")
    var batch: Int = 100

    @Option(help: "The topic (or with --phases the queue) to use; a fresh name by default. Name a prepared one, e.g. a Kafka topic with many partitions.")
    var destination: String?

    func validate() throws {
        guard messages >= 1, size >= 0, publishers >= 1, consumers >= 1, prefetch >= 1 else {
            throw ValidationError("--messages, --publishers, --consumers and --prefetch must be at least 1; --size at least 0")
        }
    }

    func run() async throws {
        if phases { return try await runPhases() }
        let transport = try await transportOptions.connect()
        let topic = destination ?? "courier-bench-\(UInt32.random(in: 0...UInt32.max))"
        let group = "bench-\(UInt32.random(in: 0...UInt32.max))"
        var subscriptions: [Subscription] = []
        for _ in 0..<consumers {
            subscriptions.append(try await transport.subscribe(to: topic, group: group, options: SubscriptionOptions(prefetch: prefetch)))
        }
        let consumerSubscriptions = subscriptions
        let payload = [UInt8](repeating: 0x61, count: size)
        let acked = Counter()
        let total = messages
        let clock = ContinuousClock()
        let start = clock.now
        let publishDone = try await withThrowingTaskGroup(of: Duration?.self) { group in
            for subscription in subscriptions {
                group.addTask {
                    for try await delivery in subscription {
                        try await delivery.ack()
                        if acked.increment() == total { await subscription.close() }
                    }
                    return nil
                }
            }
            let publisherCount = publishers
            group.addTask {
                try await withThrowingTaskGroup(of: Void.self) { publishing in
                    for publisher in 0..<publisherCount {
                        publishing.addTask {
                            for _ in stride(from: publisher, to: total, by: publisherCount) {
                                try await transport.publish(Envelope(payload: payload), to: topic)
                            }
                        }
                    }
                    try await publishing.waitForAll()
                }
                let published = clock.now - start
                // Every message is acked: close the consumers still waiting.
                while acked.value < total { try await Task.sleep(for: .milliseconds(1)) }
                for subscription in consumerSubscriptions { await subscription.close() }
                return published
            }
            var published: Duration = .zero
            for try await result in group {
                if let result { published = result }
            }
            return published
        }
        let elapsed = clock.now - start
        try await transport.shutdown()
        let report = BenchReport(
            transport: (try? TransportURL(transportOptions.url).description) ?? "?",
            messages: messages,
            size: size,
            publishers: publishers,
            consumers: consumers,
            publishSeconds: publishDone.seconds,
            totalSeconds: elapsed.seconds
        )
        print(json ? report.json : report.text)
    }
}

struct BenchReport: Codable {
    var transport: String
    var messages: Int
    var size: Int
    var publishers: Int
    var consumers: Int
    var publishSeconds: Double
    var totalSeconds: Double
    var messagesPerSecond: Double { Double(messages) / totalSeconds }
    var publishedPerSecond: Double { Double(messages) / publishSeconds }

    var text: String {
        """
        courier bench — \(transport)
          \(messages) messages of \(size) bytes, \(publishers) publisher(s), \(consumers) consumer(s) acking each
          published in \(String(format: "%.3f", publishSeconds)) s   \(Int(publishedPerSecond)) msg/s
          end to end    \(String(format: "%.3f", totalSeconds)) s   \(Int(messagesPerSecond)) msg/s (published and acked)
        """
    }

    var json: String {
        struct Output: Codable {
            var transport: String, messages: Int, size: Int, publishers: Int, consumers: Int
            var publishSeconds: Double, totalSeconds: Double, publishedPerSecond: Double, messagesPerSecond: Double
        }
        let output = Output(
            transport: transport, messages: messages, size: size, publishers: publishers, consumers: consumers,
            publishSeconds: publishSeconds, totalSeconds: totalSeconds,
            publishedPerSecond: publishedPerSecond, messagesPerSecond: messagesPerSecond
        )
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return String(decoding: try! encoder.encode(output), as: UTF8.self)
    }
}


/// A counter shared by concurrent tasks.
final class Counter: Sendable {
    private let atomic = Atomic<Int>(0)
    /// Adds one and returns the new value.
    func increment() -> Int { atomic.add(1, ordering: .relaxed).newValue }
    var value: Int { atomic.load(ordering: .relaxed) }
}

extension Bench {
    /// Publish phase, then consume phase, each timed with its CPU time per message.
    func runPhases() async throws {
        let transport = try await transportOptions.connect()
        let queue = destination ?? "courier-bench-\(UInt32.random(in: 0...UInt32.max))"
        let payload = [UInt8](repeating: 0x61, count: size)
        let total = messages
        let (publishers, batch) = (self.publishers, self.batch)
        let clock = ContinuousClock()

        var start = clock.now
        var cpuStart = ProcessCPU.seconds()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for publisher in 0..<publishers {
                group.addTask {
                    var index = publisher * batch
                    while index < total {
                        let count = min(batch, total - index)
                        try await transport.send((0..<count).map { _ in Envelope(payload: payload) }, to: queue)
                        index += publishers * batch
                    }
                }
            }
            try await group.waitForAll()
        }
        let publishSeconds = (clock.now - start).seconds
        let publishCPU = ProcessCPU.seconds() - cpuStart

        // Consume time runs from the first delivery: joining a Kafka group takes seconds that
        // say nothing about throughput (the raw baselines count the same way).
        let consumer = try await transport.consume(queue: queue, options: SubscriptionOptions(prefetch: prefetch))
        var received = 0
        for try await delivery in consumer {
            if received == 0 {
                start = clock.now
                cpuStart = ProcessCPU.seconds()
            }
            try await delivery.ack()
            received += 1
            if received == total { break }
        }
        let consumeSeconds = (clock.now - start).seconds
        let consumeCPU = ProcessCPU.seconds() - cpuStart
        await consumer.close()
        try await transport.shutdown()
        let perSecond = (Double(total) / publishSeconds, Double(total) / consumeSeconds)
        let cpu = (publishCPU / Double(total) * 1e6, consumeCPU / Double(total) * 1e6)
        if json {
            print(#"{"messages":\#(total),"size":\#(size),"publishPerSecond":\#(Int(perSecond.0)),"consumePerSecond":\#(Int(perSecond.1)),"publishCPUMicrosPerMessage":\#(String(format: "%.2f", cpu.0)),"consumeCPUMicrosPerMessage":\#(String(format: "%.2f", cpu.1))}"#)
        } else {
            print("""
                courier bench --phases — \((try? TransportURL(transportOptions.url).description) ?? "?")
                  \(total) messages of \(size) bytes; \(publishers) publishers × batches of \(batch) in flight; prefetch \(prefetch)
                  publish (confirmed)  \(Int(perSecond.0)) msg/s   \(String(format: "%.2f", cpu.0)) µs CPU/msg
                  consume (acked)      \(Int(perSecond.1)) msg/s   \(String(format: "%.2f", cpu.1)) µs CPU/msg
                """)
        }
    }
}

/// CPU time (user + system) this process has used.
enum ProcessCPU {
    static func seconds() -> Double {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return Double(usage.ru_utime.tv_sec) + Double(usage.ru_utime.tv_usec) / 1e6 + Double(usage.ru_stime.tv_sec) + Double(usage.ru_stime.tv_usec) / 1e6
    }
}
