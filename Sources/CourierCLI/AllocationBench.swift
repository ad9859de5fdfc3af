import ArgumentParser
import Courier
import CourierBus
import Foundation
import Logging
import Synchronization

/// `courier bench --allocations`: allocations per message on the hot paths, counted by the
/// malloc counter linked into this executable. Counts do not depend on how busy the machine
/// is, so they serve as a regression guard where timings cannot: `--check FILE` compares them
/// with the limits in FILE (a JSON object of path name to allocations per message) and exits
/// 1 when one is exceeded.
extension Bench {
    struct AllocationFigure: Codable {
        var path: String
        var perMessage: Double
    }

    /// One hot path: `run(n)` handles n messages.
    private struct HotPath {
        var name: String
        var run: (Int) async throws -> Void
    }

    func runAllocations() async throws {
        guard Allocations.available else {
            throw CourierError(.unsupportedCapability, "allocations are counted only with glibc (Linux); this build has no malloc counter")
        }
        let url = try transportOptions.parsedURL()
        let system = url.scheme
        let count = min(messages, 20_000)
        var figures: [AllocationFigure] = []
        for path in try await hotPaths(system: system) {
            try await path.run(min(count, 1000))  // warm caches, metadata and pools
            let before = Allocations.count
            try await path.run(count)
            let after = Allocations.count
            figures.append(AllocationFigure(path: path.name, perMessage: ((Double(after &- before) / Double(count)) * 10).rounded() / 10))
        }
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            print(String(decoding: try encoder.encode(figures), as: UTF8.self))
        } else {
            print("courier bench --allocations — \(url.description) — allocations per message, \(count) messages each")
            for figure in figures {
                print("  " + figure.path.padding(toLength: 34, withPad: " ", startingAt: 0) + String(format: "%7.1f", figure.perMessage))
            }
        }
        if let check {
            let limits = try JSONDecoder().decode([String: Double].self, from: Data(contentsOf: URL(fileURLWithPath: check)))
            var exceeded: [String] = []
            for figure in figures {
                guard let limit = limits[figure.path] else { continue }
                if figure.perMessage > limit { exceeded.append("\(figure.path): \(figure.perMessage) > \(limit)") }
            }
            let unchecked = figures.filter { limits[$0.path] == nil }.map(\.path)
            if !unchecked.isEmpty { print("  no limit in \(check) for: \(unchecked.joined(separator: ", "))") }
            guard exceeded.isEmpty else {
                throw AllocationLimitExceeded(
                    description: "allocations per message above the limits in \(check): \(exceeded.joined(separator: "; "))")
            }
            print("  every path within the limits in \(check)")
        }
    }

    private func hotPaths(system: String) async throws -> [HotPath] {
        let payload = Array(#"{"n":1}"#.utf8)
        let busEnvelope: Envelope = {
            var envelope = Envelope(payload: payload, headers: [CourierHeader.source: "/bench"])
            envelope.type = "BenchCommand.v1"
            envelope.contentType = "application/json"
            envelope.correlationID = envelope.id
            return envelope
        }()
        var paths: [HotPath] = [
            HotPath(name: "wire headers out") { n in
                var total = 0
                for _ in 0..<n {
                    WireFormat.forEachHeader(of: busEnvelope, attempt: 1) { name, value in total &+= name.utf8.count &+ value.utf8.count }
                }
                if total == 0 { print("") }
            },
            HotPath(name: "wire headers in") { n in
                let headers = WireFormat.headers(for: busEnvelope, attempt: 1).map { (Array($0.key.utf8), Array($0.value.utf8)) }
                for _ in 0..<n {
                    var received = WireFormat.Received()
                    for (name, value) in headers {
                        name.withUnsafeBytes { name in value.withUnsafeBytes { value in received.add(name: name, value: value) } }
                    }
                    _ = received.envelope(payload: payload)
                }
            },
        ]
        let serializer = JSONMessageSerializer()
        paths.append(
            HotPath(name: "json encode and decode") { n in
                for index in 0..<n { _ = try serializer.decode(BenchCommand.self, from: try serializer.encode(BenchCommand(n: index))) }
            })
        let transportURL = transportOptions.url
        paths.append(
            HotPath(name: "transport round trip (\(system))") { n in
                let transport = try await TransportFactory.connect(transportURL)
                let queue = "courier-bench-allocations-\(UInt32.random(in: 0...UInt32.max))"
                let consumer = try await transport.consume(queue: queue, options: SubscriptionOptions(prefetch: 100))
                var iterator = consumer.makeAsyncIterator()
                var sent = 0
                while sent < n {
                    let batch = (0..<min(100, n - sent)).map { _ in Envelope(payload: payload, headers: busEnvelope.headers) }
                    try await transport.send(batch, to: queue)
                    for _ in batch { try await iterator.next()?.ack() }
                    sent += batch.count
                }
                await consumer.close()
                try await transport.shutdown()
            })
        paths.append(
            HotPath(name: "bus round trip (\(system))") { n in
                let queue = "courier-bench-allocations-\(UInt32.random(in: 0...UInt32.max))"
                BusBenchQueue.name.withLock { $0 = queue }
                var logger = Logger(label: "courier.bench.allocations")
                logger.logLevel = .critical
                let bus = MessageBus(
                    transport: try await TransportFactory.connect(transportURL), configuration: .init(source: "/bench", logger: logger))
                let handled = Atomic<Int>(0)
                try await bus.handle(BenchCommand.self) { _, _ in handled.add(1, ordering: .relaxed) }
                var sent = 0
                while sent < n {
                    let batch = (0..<min(100, n - sent)).map { BenchCommand(n: sent + $0) }
                    try await bus.send(batch)
                    sent += batch.count
                    while handled.load(ordering: .relaxed) < sent { try await Task.sleep(for: .microseconds(100)) }
                }
                try await bus.shutdown()
            })
        return paths
    }
}

/// A hot path allocated more per message than its checked-in limit.
struct AllocationLimitExceeded: Error, CustomStringConvertible {
    var description: String
}
