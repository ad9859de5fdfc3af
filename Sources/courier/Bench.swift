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

    func validate() throws {
        guard messages >= 1, size >= 0, publishers >= 1, consumers >= 1, prefetch >= 1 else {
            throw ValidationError("--messages, --publishers, --consumers and --prefetch must be at least 1; --size at least 0")
        }
    }

    func run() async throws {
        let transport = try transportOptions.connect()
        let topic = "courier-bench-\(UInt32.random(in: 0...UInt32.max))"
        let group = "bench"
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

extension Duration {
    var seconds: Double {
        Double(components.seconds) + Double(components.attoseconds) / 1e18
    }
}

/// A counter shared by concurrent tasks.
final class Counter: Sendable {
    private let atomic = Atomic<Int>(0)
    /// Adds one and returns the new value.
    func increment() -> Int { atomic.add(1, ordering: .relaxed).newValue }
    var value: Int { atomic.load(ordering: .relaxed) }
}
