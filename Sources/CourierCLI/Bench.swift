import ArgumentParser
import Courier
import CourierBus
import Foundation
import Histogram
import Synchronization

/// A load generator: publishers and acking consumers on one topic and group, end to end.
struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure throughput and end-to-end latency: publishers → topic → group of acking consumers.",
        discussion: """
            Publishers and consumers run at once. Throughput is messages acked per second from \
            the first publish to the last ack; latency runs from the moment a message was due \
            to be published (so a slow publisher cannot hide delays) to its delivery, recorded \
            in an HdrHistogram (p50, p90, p99, p99.9, max): every message with --rate, every \
            64th at full speed. A progress line is shown every \
            second on standard error (rewritten in place on a terminal).

            Examples:
              courier bench --messages 1000000 --size 256
              courier bench --publishers 4 --consumers 4 --json
              courier bench --transport amqp://localhost --rate 1000 --duration 30
              courier bench --phases --batch 50 --publishers 20 --prefetch 1000
              courier bench --confirm off --in-flight 5000

            Every transport confirms each message (its contract: nothing confirmed is lost). \
            With --confirm on a publisher waits for that confirm before its next publish; with \
            --confirm off it does not wait, keeping up to --in-flight publishes outstanding: \
            the throughput of an application that pipelines its publishes.
            """
    )

    @OptionGroup var transportOptions: TransportOptions

    @Option(help: "How many messages to publish in all (ignored with --duration).")
    var messages: Int = 1_000_000

    @Option(help: "Publish for this many seconds instead of a message count.")
    var duration: Double?

    @Option(help: "Publish at this steady rate, in messages per second over all publishers (default: as fast as confirms allow).")
    var rate: Double?

    @Option(help: "Payload size in bytes.")
    var size: Int = 256

    @Option(help: "Concurrent publishers.")
    var publishers: Int = 1

    @Option(help: "Competing consumers in one group.")
    var consumers: Int = 1

    @Option(
        name: .customLong("prefetch"),
        help: "Un-acked deliveries per consumer (default 256; with --bus, the bus's default: concurrency + 32).")
    var prefetchOption: Int?

    /// `--prefetch`, default 256.
    var prefetch: Int { prefetchOption ?? 256 }

    @Option(
        help:
            "on: each publisher waits for the confirm of its publish before the next; off: publishers do not wait, keeping up to --in-flight publishes outstanding."
    )
    var confirm: ConfirmMode = .on

    @Option(help: "With --confirm off: publishes outstanding per publisher.")
    var inFlight: Int = 1000

    @Flag(help: "Print the report as JSON.")
    var json = false

    enum ConfirmMode: String, ExpressibleByArgument, Codable, Sendable {
        case on, off
    }

    @Flag(
        help:
            "Run two phases on a command queue instead: publish everything (confirmed), then consume everything (acking each). For comparisons with the raw C clients."
    )
    var phases = false

    @Flag(
        help:
            "Measure the bus instead: --messages commands sent through MessageBus and handled by a handler with default options (encode, send, decode, handle, ack), against the transport alone in the same run."
    )
    var bus = false

    @Option(
        help:
            "With --bus: the percentage of messages that are invalid JSON (dead-lettered by the bus); the run is measured clean and poisoned, and the ratio printed."
    )
    var poison: Double?

    @Option(
        help: ArgumentHelp(
            "Measure the outbox and the inbox instead, in a store (sqlite for a temporary file, a file path, or a postgres:// URL): direct publishing, the relay, commit-to-delivery latency at --rate (1000/s) for --duration (5 s), and the inbox's CPU.",
            valueName: "store"))
    var outbox: String?

    @Flag(
        help:
            "Count allocations per message on the hot paths instead (header coding, JSON, a transport round trip, a bus round trip; at most 20,000 messages each)."
    )
    var allocations = false

    @Option(
        help: ArgumentHelp(
            "With --allocations: a JSON file of path name to the most allocations per message allowed; exits 1 when a path exceeds its limit.",
            valueName: "file"))
    var check: String?

    @Option(help: "With --phases or --bus: messages per send call; publishers × batch messages are in flight.")
    var batch: Int = 100

    @Option(
        help:
            "The topic (or with --phases the queue) to use; a fresh name by default. Name a prepared one, e.g. a Kafka topic with many partitions."
    )
    var destination: String?

    func validate() throws {
        try NumericOptions.atLeastOne(messages, "--messages")
        try NumericOptions.atLeastOne(publishers, "--publishers", maximum: 10_000)
        try NumericOptions.atLeastOne(consumers, "--consumers", maximum: 10_000)
        try NumericOptions.atLeastOne(prefetchOption, "--prefetch", maximum: 65_535)
        try NumericOptions.atLeastOne(inFlight, "--in-flight", maximum: 1_000_000)
        try NumericOptions.atLeastOne(batch, "--batch", maximum: 1_000_000)
        guard (0...Self.maximumSize).contains(size) else {
            throw ValidationError("--size is \(size); it must be a number of bytes from 0 to \(Self.maximumSize) (64 MiB)")
        }
        try NumericOptions.seconds(duration, "--duration")
        try NumericOptions.rate(rate, "--rate")
        if phases && (duration != nil || rate != nil) { throw ValidationError("--phases takes --messages, not --duration or --rate") }
        if phases, case .memory(let settings)? = try? transportOptions.parsedURL() { try Self.memoryHolds(messages, of: size, settings) }
        if bus && (phases || duration != nil || rate != nil) {
            throw ValidationError("--bus takes --messages, --publishers, --batch and --poison, not --phases, --duration or --rate")
        }
        if outbox != nil && (phases || bus || poison != nil) {
            throw ValidationError("--outbox takes --messages, --size, --rate and --duration, not --phases, --bus or --poison")
        }
        if allocations && (phases || bus || outbox != nil || duration != nil || rate != nil) {
            throw ValidationError("--allocations takes --messages and --check, not --phases, --bus, --outbox, --duration or --rate")
        }
        if check != nil && !allocations { throw ValidationError("--check goes with --allocations") }
        if let poison {
            guard bus else { throw ValidationError("--poison goes with --bus") }
            guard poison.isFinite, poison > 0, poison <= 50 else {
                throw ValidationError("--poison is \(poison); it must be a percentage above 0 and at most 50")
            }
        }
    }

    /// `--phases` publishes every message before consuming one; an in-memory queue that cannot
    /// hold them all would make the last publishes wait for room forever (or fail, with
    /// `overflow=reject`), so the run is refused up front with the URL that fits.
    static func memoryHolds(_ messages: Int, of size: Int, _ settings: MemorySettings) throws {
        let capacity = settings.configuration.queueCapacity
        let byteCapacity = settings.configuration.queueByteCapacity
        let (bytes, overflow) = messages.multipliedReportingOverflow(by: size)
        guard messages > capacity || overflow || bytes > byteCapacity else { return }
        throw ValidationError(
            """
            --phases publishes all \(messages) messages before consuming any, and an in-memory queue \
            holds \(capacity) messages and \(byteCapacity) payload bytes: the publish phase would wait \
            for room forever. Raise the queue's limits in the URL (memory://?capacity=\(messages)&capacity_bytes=\(overflow ? Int.max : max(1, bytes))) \
            or publish fewer --messages.
            """)
    }

    /// The largest `--size`: 64 MiB, above every broker's default message limit.
    static let maximumSize = 64 << 20

    /// The header carrying when a message was due, in nanoseconds of this process's clock.
    static let dueHeader = "courier-bench-due"

    func run() async throws {
        if phases { return try await runPhases() }
        if bus { return try await runBus() }
        if allocations { return try await runAllocations() }
        if let outbox { return try await runOutbox(outbox) }
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
        let published = Counter()
        let latencies = LatencyRecorder()
        let (publisherCount, rate, limit) = (publishers, rate, duration.flatMap(NumericOptions.duration))
        let window = confirm == .on ? 1 : inFlight
        let failed = Counter()
        let total = duration == nil ? messages : Int.max
        let clock = ContinuousClock()
        let start = clock.now
        let progress = Task { await Self.showProgress(start: start, published: published, acked: acked, latencies: latencies) }
        let publishDone = try await withThrowingTaskGroup(of: Duration?.self) { group in
            for subscription in subscriptions {
                group.addTask {
                    for try await delivery in subscription {
                        if let due = delivery.envelope.headers[Self.dueHeader].flatMap(UInt64.init) {
                            latencies.record(nanoseconds: DispatchTime.now().uptimeNanoseconds &- due)
                        }
                        try await delivery.ack()
                        _ = acked.increment()
                    }
                    return nil
                }
            }
            group.addTask {
                try await withThrowingTaskGroup(of: Void.self) { tasks in
                    for publisher in 0..<publisherCount {
                        tasks.addTask {
                            let pipeline = PublishPipeline(window: window, failed: failed)
                            let interval = rate.map { Duration.nanoseconds(Int64(1e9 * Double(publisherCount) / $0)) }
                            let begin = DispatchTime.now().uptimeNanoseconds
                            var index = publisher
                            var sent = 0
                            while index < total {
                                if let limit, clock.now - start >= limit { break }
                                var due = DispatchTime.now().uptimeNanoseconds
                                if let interval {
                                    // Steady rate: each message has its due time; latency counts from it.
                                    let (seconds, attoseconds) = interval.components
                                    due = begin + UInt64(sent) * UInt64(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
                                    let now = DispatchTime.now().uptimeNanoseconds
                                    if due > now { try await Task.sleep(for: .nanoseconds(Int64(due - now))) }
                                }
                                // At full speed every 64th message carries its due time (enough samples,
                                // little cost); at a steady rate, every message does.
                                let stamped = interval != nil || sent % 64 == 0
                                let headers = stamped ? [Self.dueHeader: String(due)] : [:]
                                let envelope = Envelope(payload: payload, headers: headers)
                                try await pipeline.submit { try await transport.publish(envelope, to: topic) }
                                _ = published.increment()
                                sent += 1
                                index += publisherCount
                            }
                            try await pipeline.finish()
                        }
                    }
                    try await tasks.waitForAll()
                }
                let publishTime = clock.now - start
                // Every message is acked: close the consumers still waiting.
                let idleLimit = Duration.seconds(30)
                var last = (acked.value, clock.now)
                while acked.value < published.value - failed.value {
                    try await Task.sleep(for: .milliseconds(1))
                    if acked.value != last.0 { last = (acked.value, clock.now) } else if clock.now - last.1 > idleLimit { break }
                }
                for subscription in consumerSubscriptions { await subscription.close() }
                return publishTime
            }
            var publishTime: Duration = .zero
            for try await result in group {
                if let result { publishTime = result }
            }
            return publishTime
        }
        let elapsed = clock.now - start
        progress.cancel()
        try await transport.shutdown()
        let report = BenchReport(
            transport: (try? TransportURL(transportOptions.url).description) ?? "?",
            messages: acked.value,
            size: size,
            publishers: publishers,
            consumers: consumers,
            rate: rate,
            confirm: confirm,
            inFlight: confirm == .off ? inFlight : nil,
            publishSeconds: publishDone.seconds,
            totalSeconds: elapsed.seconds,
            latency: latencies.summary()
        )
        print(json ? report.json : report.text)
        if failed.value > 0 {
            throw CourierError(.notConfirmed, "\(failed.value) of \(published.value) publishes were not confirmed")
        }
        if acked.value < published.value {
            throw CourierError(.timeout, "only \(acked.value) of \(published.value) published messages were delivered")
        }
    }

    /// Prints a progress line every second on standard error until cancelled.
    static func showProgress(start: ContinuousClock.Instant, published: Counter, acked: Counter, latencies: LatencyRecorder) async {
        let terminal = isatty(STDERR_FILENO) != 0
        var last = (acked.value, ContinuousClock.now)
        while !Task.isCancelled {
            try? await Task.sleep(for: .seconds(1))
            if Task.isCancelled { break }
            let now = ContinuousClock.now
            let rate = Double(acked.value - last.0) / (now - last.1).seconds
            last = (acked.value, now)
            let p99 = latencies.summary().p99
            let line = String(
                format: "%7.1f s  %10d published  %10d acked  %9.0f msg/s  p99 %@", (now - start).seconds, published.value, acked.value,
                rate, LatencySummary.format(p99))
            FileHandle.standardError.write(Data((terminal ? "\r" + line : line + "\n").utf8))
        }
        if terminal { FileHandle.standardError.write(Data("\n".utf8)) }
    }
}

/// End-to-end latencies from concurrent consumers, in an HdrHistogram (1 µs to 1 h, 3 digits).
final class LatencyRecorder: Sendable {
    private let histogram = Mutex(
        Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 3_600_000_000, numberOfSignificantValueDigits: .three))

    func record(nanoseconds: UInt64) {
        let microseconds = max(1, min(nanoseconds / 1000, 3_600_000_000))
        histogram.withLock { _ = $0.record(microseconds) }
    }

    func summary() -> LatencySummary {
        histogram.withLock { histogram in
            LatencySummary(
                count: Int(histogram.totalCount),
                p50: histogram.valueAtPercentile(50),
                p90: histogram.valueAtPercentile(90),
                p99: histogram.valueAtPercentile(99),
                p999: histogram.valueAtPercentile(99.9),
                max: histogram.totalCount == 0 ? 0 : histogram.max
            )
        }
    }
}

/// Latency percentiles in microseconds.
struct LatencySummary: Codable {
    var count: Int
    var p50: UInt64, p90: UInt64, p99: UInt64, p999: UInt64, max: UInt64

    static func format(_ microseconds: UInt64) -> String {
        microseconds >= 10_000
            ? String(format: "%.1f ms", Double(microseconds) / 1000) : String(format: "%.3f ms", Double(microseconds) / 1000)
    }

    var text: String {
        "p50 \(Self.format(p50))  p90 \(Self.format(p90))  p99 \(Self.format(p99))  p99.9 \(Self.format(p999))  max \(Self.format(max))"
    }
}

struct BenchReport: Codable {
    var transport: String
    var messages: Int
    var size: Int
    var publishers: Int
    var consumers: Int
    var rate: Double?
    var confirm: Bench.ConfirmMode
    var inFlight: Int?
    var publishSeconds: Double
    var totalSeconds: Double
    var latency: LatencySummary
    var messagesPerSecond: Double { Double(messages) / totalSeconds }
    var publishedPerSecond: Double { Double(messages) / publishSeconds }

    var text: String {
        """
        courier bench — \(transport)
          \(messages) messages of \(size) bytes, \(publishers) publisher(s)\(rate.map { " at \(Int($0)) msg/s" } ?? ""), \(consumers) consumer(s) acking each
          confirm \(confirm == .on ? "on: each publisher waits for its confirm" : "off: up to \(inFlight ?? 0) publishes outstanding per publisher")
          published in \(String(format: "%.3f", publishSeconds)) s   \(Int(publishedPerSecond)) msg/s
          end to end    \(String(format: "%.3f", totalSeconds)) s   \(Int(messagesPerSecond)) msg/s (published and acked)
          latency       \(latency.text)
        """
    }

    var json: String {
        struct Output: Codable {
            var transport: String, messages: Int, size: Int, publishers: Int, consumers: Int, rate: Double?
            var confirm: Bench.ConfirmMode, inFlight: Int?
            var publishSeconds: Double, totalSeconds: Double, publishedPerSecond: Double, messagesPerSecond: Double
            var latencyMicroseconds: LatencySummary
        }
        let output = Output(
            transport: transport, messages: messages, size: size, publishers: publishers, consumers: consumers, rate: rate,
            confirm: confirm, inFlight: inFlight,
            publishSeconds: publishSeconds, totalSeconds: totalSeconds,
            publishedPerSecond: publishedPerSecond, messagesPerSecond: messagesPerSecond,
            latencyMicroseconds: latency
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
        let window = confirm == .on ? 1 : max(1, inFlight / batch)
        let failed = Counter()
        let clock = ContinuousClock()

        var start = clock.now
        var cpuStart = ProcessCPU.seconds()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for publisher in 0..<publishers {
                group.addTask {
                    let pipeline = PublishPipeline(window: window, failed: failed)
                    var index = publisher * batch
                    while index < total {
                        let envelopes = (0..<min(batch, total - index)).map { _ in Envelope(payload: payload) }
                        try await pipeline.submit { try await transport.send(envelopes, to: queue) }
                        index += publishers * batch
                    }
                    try await pipeline.finish()
                }
            }
            try await group.waitForAll()
        }
        let publishSeconds = (clock.now - start).seconds
        let publishCPU = ProcessCPU.seconds() - cpuStart
        if failed.value > 0 {
            try? await transport.shutdown()
            throw CourierError(.notConfirmed, "\(failed.value) send calls were not confirmed")
        }

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
            print(
                #"{"messages":\#(total),"size":\#(size),"publishPerSecond":\#(Int(perSecond.0)),"consumePerSecond":\#(Int(perSecond.1)),"publishCPUMicrosPerMessage":\#(String(format: "%.2f", cpu.0)),"consumeCPUMicrosPerMessage":\#(String(format: "%.2f", cpu.1))}"#
            )
        } else {
            print(
                """
                courier bench --phases — \((try? TransportURL(transportOptions.url).description) ?? "?")
                  \(total) messages of \(size) bytes; \(publishers) publishers × \(window) batch(es) of \(batch) in flight (confirm \(confirm.rawValue)); prefetch \(prefetch)
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
        return Double(usage.ru_utime.tv_sec) + Double(usage.ru_utime.tv_usec) / 1e6 + Double(usage.ru_stime.tv_sec) + Double(
            usage.ru_stime.tv_usec) / 1e6
    }
}

/// One publisher's outstanding publishes: with a window of 1 each waits for its confirm
/// before the next starts; with more, up to `window` run at once and a failure is counted
/// (the run reports it) instead of stopping the publisher.
final class PublishPipeline: @unchecked Sendable {
    private let window: Int
    private let failed: Counter
    private var running: [Task<Void, Never>] = []
    private var next = 0

    init(window: Int, failed: Counter) {
        self.window = window
        self.failed = failed
    }

    func submit(_ publish: @escaping @Sendable () async throws -> Void) async throws {
        if window == 1 { return try await publish() }
        let failed = self.failed
        let task = Task {
            do { try await publish() } catch { _ = failed.increment() }
        }
        if running.count < window {
            running.append(task)
        } else {
            // Oldest first: the window slides once the oldest outstanding publish is confirmed.
            await running[next].value
            running[next] = task
            next = (next + 1) % window
        }
    }

    func finish() async throws {
        for task in running { await task.value }
        running.removeAll()
    }
}
