import Courier
import Foundation
import Testing

/// The `courier` tool driven as a user would: the built binary, with arguments, standard input
/// and exit codes, against the local RabbitMQ, the Kafka mock cluster and memory://.
extension BrokerIntegration {
    @Suite("courier tool", .serialized)
    struct CourierToolTests {
        struct Run {
            var status: Int32
            var output: String
            var errors: String
            var lines: [String] { output.split(separator: "\n").map(String.init) }
        }

        /// `.build/debug/courier`, built by `swift build --build-tests`.
        static let binary: URL = {
            var root = URL(fileURLWithPath: #filePath)
            for _ in 0..<3 { root.deleteLastPathComponent() }
            return root.appendingPathComponent(".build/debug/courier")
        }()

        /// A started `courier` process whose output goes to temporary files (no pipes to drain).
        final class Started: @unchecked Sendable {
            let process = Process()
            let output = FileManager.default.temporaryDirectory.appendingPathComponent("courier-out-\(MessageID.random())")
            let errors = FileManager.default.temporaryDirectory.appendingPathComponent("courier-err-\(MessageID.random())")

            init(_ arguments: [String], input: String?, transport: String?) throws {
                try #require(
                    FileManager.default.isExecutableFile(atPath: CourierToolTests.binary.path),
                    "courier is not built at \(CourierToolTests.binary.path)")
                _ = FileManager.default.createFile(atPath: output.path, contents: nil)
                _ = FileManager.default.createFile(atPath: errors.path, contents: nil)
                process.executableURL = CourierToolTests.binary
                process.arguments = arguments + (transport.map { ["--transport", $0] } ?? [])
                process.standardOutput = try FileHandle(forWritingTo: output)
                process.standardError = try FileHandle(forWritingTo: errors)
                let stdin = FileManager.default.temporaryDirectory.appendingPathComponent("courier-in-\(MessageID.random())")
                _ = FileManager.default.createFile(atPath: stdin.path, contents: Data((input ?? "").utf8))
                process.standardInput = try FileHandle(forReadingFrom: stdin)
                try process.run()
            }

            var errorText: String { (try? String(contentsOf: errors, encoding: .utf8)) ?? "" }

            /// Waits for the exit (at most `limit`, then kills it) and returns what it printed.
            func finish(within limit: Duration = .seconds(60)) async throws -> Run {
                let deadline = ContinuousClock.now + limit
                while process.isRunning {
                    if ContinuousClock.now > deadline {
                        process.terminate()
                        Issue.record("courier \(process.arguments ?? []) did not exit within \(limit)")
                        break
                    }
                    try await Task.sleep(for: .milliseconds(20))
                }
                process.waitUntilExit()
                return Run(
                    status: process.terminationStatus,
                    output: (try? String(contentsOf: output, encoding: .utf8)) ?? "",
                    errors: errorText
                )
            }
        }

        private func courier(_ arguments: [String], input: String? = nil, transport: String? = RabbitMQBroker.url) async throws -> Run {
            try await Started(arguments, input: input, transport: transport).finish()
        }

        private func unique(_ name: String) -> String { "tool-\(name)-\(MessageID.random().prefix(8).lowercased())" }

        /// The README's main job, on every transport: the summary says every customer arrived once.
        /// The services keep their customers in SQLite by default, in PostgreSQL with `--store`,
        /// and the summary counts what the databases hold.
        @Test func theDemoDeliversEveryCustomerExactlyOnce() async throws {
            let runs: [(transport: String, store: [String], source: String)] = [
                ("memory://", [], "the databases"), (RabbitMQBroker.url, [], "the databases"), (KafkaBroker.url(), [], "the databases"),
                (RabbitMQBroker.url, ["--store", PostgresDatabase.url], "the databases"),
                ("memory://", ["--store", "none"], "the demo's counters"),
            ]
            for (transport, store, source) in runs {
                let run = try await Started(["demo", "--customers", "30"] + store, input: nil, transport: transport).finish(
                    within: .seconds(120))
                #expect(run.status == 0, "demo on \(TransportURL.redacted(transport)) \(store): \(run.errors)\n\(run.output)")
                #expect(run.output.contains("✔ every customer arrived exactly once"), "\(run.output)")
                #expect(run.output.contains("counts from \(source)"), "\(run.output)")
                #expect(run.lines.filter { $0.contains("marketing    stored customer") }.count == 30, "the flow is shown as it happens")
                #expect(!run.output.contains("guest:guest") && !run.output.contains("courier:courier"), "passwords are redacted")
            }
        }

        /// Dead letters made by nacking past the attempt limit, then listed, shown and replayed
        /// with the tool, on RabbitMQ and Kafka.
        @Test func deadLettersAreListedShownAndReplayed() async throws {
            for transport in [RabbitMQBroker.url, KafkaBroker.url()] {
                let name = TransportURL.redacted(transport)
                let queue = unique("dlq")
                let sent = try await courier(
                    ["send", queue, "--key", "same-key", "--content-type", "application/json"], input: "{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n",
                    transport: transport)
                #expect(sent.status == 0, "\(name): \(sent.errors)")
                let ids = sent.lines
                // Ten attempts each, then the transport dead-letters them.
                let nacked = try await courier(
                    ["consume", "--queue", queue, "--settle", "nack", "--count", "30", "--timeout", "20"], transport: transport)
                #expect(nacked.status == 0, "\(name): \(nacked.errors)")

                let listed = try await courier(["dead-letters", "list", "--queue", queue, "--json"], transport: transport)
                #expect(listed.status == 0, "\(name): \(listed.errors)")
                let letters = listed.lines.compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
                #expect(Set(letters.compactMap { $0["id"] as? String }) == Set(ids), "\(name): every dead letter is listed, one key or not")
                let reasons = letters.compactMap { ($0["headers"] as? [String: String])?[CourierHeader.deadLetterReason] }
                #expect(reasons.count == 3 && reasons.allSatisfy { $0.contains("attempts exhausted") }, "\(name): \(reasons)")

                let shown = try await courier(["dead-letters", "show", ids[1], "--queue", queue], transport: transport)
                #expect(shown.status == 0, "\(name): \(shown.errors)")
                #expect(shown.output.contains("ce_courierdlattempts: 10"), "\(name): \(shown.output)")
                #expect(shown.output.contains("\"n\" : 2"), "\(name): the JSON payload is pretty-printed: \(shown.output)")

                let one = try await courier(["dead-letters", "replay", ids[1], "--queue", queue], transport: transport)
                #expect(one.status == 0, "\(name): \(one.errors)")
                #expect(one.output.contains("replayed 1 dead letter to queue \(queue); 2 kept"), "\(name): \(one.output)")
                let back = try await courier(
                    ["consume", "--queue", queue, "--count", "1", "--json", "--timeout", "20"], transport: transport)
                let message = back.lines.compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }.first
                #expect(message?["id"] as? String == ids[1], "\(name): the replayed message is back in its queue")
                #expect(message?["attempt"] as? Int == 1, "\(name): and starts again at attempt 1")
                #expect(
                    (message?["headers"] as? [String: String])?[CourierHeader.deadLetterReason] == nil,
                    "\(name): without dead-letter headers")

                let rest = try await courier(["dead-letters", "replay", "--all", "--queue", queue], transport: transport)
                #expect(rest.output.contains("replayed 2 dead letters"), "\(name): \(rest.output) \(rest.errors)")
                let empty = try await courier(["dead-letters", "list", "--queue", queue], transport: transport)
                #expect(empty.lines.first?.hasPrefix("0 dead letters") == true, "\(name): \(empty.output)")
                let missing = try await courier(["dead-letters", "replay", "no-such-id", "--queue", queue], transport: transport)
                #expect(missing.status == 1 && missing.errors.contains("no dead letter no-such-id"), "\(name): \(missing.errors)")
                let usage = try await courier(["dead-letters", "replay", "--queue", queue], transport: transport)
                #expect(usage.status == 64, "\(name): replay without ids or --all is a usage error")
            }
        }

        @Test func sendFromStandardInputThenConsumeAsJSON() async throws {
            let queue = unique("queue")
            let sent = try await courier(["send", queue], input: "first\nsecond\n\nthird\n")
            #expect(sent.status == 0, "\(sent.errors)")
            #expect(sent.lines.count == 3, "one id per confirmed command")
            let consumed = try await courier(["consume", "--queue", queue, "--count", "3", "--json", "--timeout", "20"])
            #expect(consumed.status == 0, "\(consumed.errors)")
            let objects = consumed.lines.compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
            #expect(objects.compactMap { $0["payload"] as? String } == ["first", "second", "third"])
            #expect(objects.compactMap { $0["id"] as? String } == sent.lines)
        }

        @Test func publishToAGroupShowsKeyHeadersAndPrettyJSON() async throws {
            let topic = unique("topic")
            // A first consume creates the group (nothing arrives: exit 0 without --count).
            let created = try await courier(["consume", "--topic", topic, "--group", "audit", "--timeout", "1"])
            #expect(created.status == 0, "\(created.errors)")
            let published = try await courier([
                "publish", topic, #"{"b":1,"a":[2,3]}"#, "--content-type", "application/json", "--key", "customer-7", "--header",
                "tenant=acme",
            ])
            #expect(published.status == 0, "\(published.errors)")
            let read = try await courier(["consume", "--topic", topic, "--group", "audit", "--count", "1", "--timeout", "20"])
            #expect(read.status == 0, "\(read.errors)")
            #expect(read.output.contains(published.lines.first ?? "?"))
            #expect(read.output.contains("key: customer-7"))
            #expect(read.output.contains("tenant: acme"))
            #expect(read.output.contains("\"a\" : [\n    2,"), "pretty-printed JSON: \(read.output)")
        }

        @Test func leaveReturnsTheMessageAndTimeoutsExitWithThree() async throws {
            let queue = unique("leave")
            _ = try await courier(["send", queue, "keep me"])
            let left = try await courier(["consume", "--queue", queue, "--count", "1", "--settle", "leave", "--timeout", "20"])
            #expect(left.status == 0)
            #expect(left.output.contains("keep me"))
            let again = try await courier(["consume", "--queue", queue, "--count", "1", "--timeout", "20"])
            #expect(again.output.contains("keep me"), "a message left un-acked comes back")
            let empty = try await courier(["consume", "--queue", queue, "--count", "1", "--timeout", "1"])
            #expect(empty.status == 3, "--timeout before --count exits 3")
        }

        @Test func tailFollowsATopicWithoutAGroupOfItsOwn() async throws {
            let topic = unique("tail")
            let tail = try Started(["tail", topic, "--count", "2", "--timeout", "30"], input: nil, transport: RabbitMQBroker.url)
            let deadline = ContinuousClock.now + .seconds(20)
            while !tail.errorText.contains("tailing"), ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(50)) }
            _ = try await courier(["publish", topic], input: "alpha\nbeta\n")
            let run = try await tail.finish()
            #expect(run.status == 0, "\(run.errors)")
            #expect(run.output.contains("alpha") && run.output.contains("beta"))
        }

        @Test func errorsAreTypedAndExitCodesDependable() async throws {
            let bad = try await courier(["send", "q", "x"], transport: "amqp://guest:hunter2@127.0.0.1:1/")
            #expect(bad.status == 1)
            #expect(bad.errors.contains("unreachable"))
            #expect(!bad.errors.contains("hunter2"))
            let badURL = try await courier(["send", "q", "x"], transport: "nope://x")
            #expect(badURL.status == 1)
            #expect(badURL.errors.contains("invalidURL"))
            let usage = try await courier(["consume", "--topic", "t"], transport: nil)
            #expect(usage.status == 64, "bad usage")
            let help = try await courier(["send", "--help"], transport: nil)
            #expect(help.status == 0 && help.output.contains("Examples"))
        }

        /// `courier health` as an exec probe: exit 0 and one line per connection when the
        /// broker answers; exit 1 with the reason (and no password) when no node does, within
        /// the connection timeout; 0 on memory and the Kafka mock too.
        @Test func healthExitsZeroWhenHealthyAndOneWhenNoNodeAnswers() async throws {
            let healthy = try await courier(["health"])
            #expect(healthy.status == 0, "\(healthy.output)\(healthy.errors)")
            #expect(healthy.lines.first == "rabbitmq: healthy")
            #expect(healthy.output.contains("publish: connected") && healthy.output.contains("consume: connected"))

            let started = ContinuousClock.now
            let down = try await courier(["health"], transport: "amqp://guest:hunter2@127.0.0.1:1,127.0.0.1:2/?connection_timeout=2")
            #expect(down.status == 1)
            #expect(down.lines.first == "rabbitmq: unhealthy", "\(down.output)\(down.errors)")
            #expect(down.output.contains("cannot reach any of the 2 RabbitMQ nodes"))
            #expect(!(down.output + down.errors).contains("hunter2"))
            #expect(ContinuousClock.now - started < .seconds(10), "within the connection timeout")

            let memory = try await courier(["health"], transport: "memory://")
            #expect(memory.status == 0 && memory.output.contains("in-process: connected"))
            let kafka = try await courier(["health"], transport: KafkaBroker.url())
            #expect(kafka.status == 0 && kafka.output.contains("producer: connected"), "\(kafka.output)\(kafka.errors)")
        }

        @Test func benchReportsThroughputAndLatencyPercentiles() async throws {
            for transport in ["memory://", RabbitMQBroker.url] {
                let run = try await courier(
                    ["bench", "--rate", "500", "--duration", "1", "--publishers", "2", "--json"], transport: transport)
                #expect(run.status == 0, "\(transport): \(run.errors)")
                let report = try #require(
                    try JSONSerialization.jsonObject(with: Data(run.output.utf8)) as? [String: Any], "JSON report: \(run.output)")
                let latency = try #require(report["latencyMicroseconds"] as? [String: Any])
                let messages = report["messages"] as? Int ?? 0
                #expect((400...600).contains(messages), "about 500 messages at 500 msg/s for 1 s, got \(messages)")
                #expect(latency["count"] as? Int == messages, "every message's latency recorded at a steady rate")
                for key in ["p50", "p90", "p99", "p999", "max"] { #expect((latency[key] as? Int ?? 0) > 0, "\(key) in \(latency)") }
            }
        }

        @Test func benchWithConfirmOffPipelinesAndStillDeliversEverything() async throws {
            for transport in ["memory://", RabbitMQBroker.url, KafkaBroker.url()] {
                let run = try await courier(
                    ["bench", "--messages", "5000", "--confirm", "off", "--in-flight", "200", "--json"], transport: transport)
                #expect(run.status == 0, "\(TransportURL.redacted(transport)): \(run.errors)")
                let report = try #require(
                    try JSONSerialization.jsonObject(with: Data(run.output.utf8)) as? [String: Any], "JSON report: \(run.output)")
                #expect(report["confirm"] as? String == "off")
                #expect(report["inFlight"] as? Int == 200)
                #expect(report["messages"] as? Int == 5000, "every message published without waiting was still delivered and acked")
                let phases = try await courier(
                    ["bench", "--phases", "--messages", "2000", "--batch", "50", "--confirm", "off", "--in-flight", "500"],
                    transport: transport)
                #expect(
                    phases.status == 0 && phases.output.contains("10 batch(es) of 50 in flight (confirm off)"),
                    "\(phases.output) \(phases.errors)")
            }
            let bad = try await courier(["bench", "--confirm", "maybe"], transport: "memory://")
            #expect(bad.status == 64)
            // Publishing everything first into an in-memory queue too small for it waited for
            // room forever; it is a usage error naming the URL that fits, and that URL runs.
            let tooMany = try await courier(
                ["bench", "--phases", "--messages", "200", "--size", "10"], transport: "memory://?capacity=100")
            #expect(tooMany.status == 64 && tooMany.errors.contains("memory://?capacity=200&capacity_bytes=2000"), "\(tooMany.errors)")
            let tooLarge = try await courier(
                ["bench", "--phases", "--messages", "200", "--size", "10"], transport: "memory://?capacity_bytes=1000")
            #expect(tooLarge.status == 64 && tooLarge.errors.contains("would wait for room forever"), "\(tooLarge.errors)")
            let fits = try await courier(
                ["bench", "--phases", "--messages", "200", "--size", "10"], transport: "memory://?capacity=200&capacity_bytes=2000")
            #expect(fits.status == 0 && fits.output.contains("publish (confirmed)"), "\(fits.output) \(fits.errors)")
        }

        @Test func topologyPrintsWhatWouldBeDeclaredWithoutConnecting() async throws {
            // Port 1: nothing listens there, and topology never connects.
            let rabbit = try await courier(
                ["topology", "--topic", "customers", "--group", "audit"], transport: "amqp://127.0.0.1:1/?queue_type=quorum")
            #expect(rabbit.status == 0, "\(rabbit.errors)")
            #expect(rabbit.output.contains("exchange customers (fanout, durable)"))
            #expect(rabbit.output.contains("queue customers.audit (durable, x-queue-type=quorum)"))
            #expect(rabbit.output.contains("binding customers -> customers.audit"))
            #expect(rabbit.output.contains("queue customers.audit.dead-letter"))
            let kafka = try await courier(
                ["topology", "--queue", "create-customer"], transport: "kafka://127.0.0.1:1?partitions=12&retry_topics=true")
            #expect(kafka.status == 0, "\(kafka.errors)")
            #expect(kafka.output.contains("topic create-customer (created with 12 partitions"))
            #expect(kafka.output.contains("consumer group create-customer (shared by every consumer"))
            #expect(kafka.output.contains("topic create-customer.retry") && kafka.output.contains("topic create-customer.dead-letter"))
            let memory = try await courier(["topology", "--queue", "q"], transport: "memory://")
            #expect(memory.status == 0 && memory.output.contains("in-process queue q"))
            let bad = try await courier(["topology", "--queue", "bad name"], transport: "memory://")
            #expect(bad.status == 1 && bad.errors.contains("invalidName"))
        }

        @Test func theCommandsWorkOnKafkaAndMemory() async throws {
            let queue = unique("kafka")
            let kafka = KafkaBroker.url()
            let sent = try await courier(["send", queue], input: "k1\nk2\n", transport: kafka)
            #expect(sent.status == 0, "\(sent.errors)")
            let read = try await courier(["consume", "--queue", queue, "--count", "2", "--timeout", "30"], transport: kafka)
            #expect(read.status == 0, "\(read.errors)")
            #expect(read.output.contains("k1") && read.output.contains("k2"))
            // memory:// lives in the one process: what is sent there is read back by nobody else,
            // but every command runs and exits as documented.
            let memory = try await courier(["publish", "events", "hello"], transport: "memory://")
            #expect(memory.status == 0 && memory.lines.count == 1)
            let nothing = try await courier(["consume", "--queue", "q", "--timeout", "0.5"], transport: "memory://")
            #expect(nothing.status == 0 && nothing.output.isEmpty)
        }

        /// NaN, infinities, negative and huge numbers in every numeric option: exit status 64
        /// with a message naming the option, never a crash (SIGILL was "Double value cannot be
        /// converted to Int").
        @Test(arguments: [
            ["consume", "--queue", "q", "--timeout", "nan"],
            ["consume", "--queue", "q", "--count", "1", "--timeout", "1e300"],
            ["consume", "--queue", "q", "--timeout", "inf"],
            ["consume", "--queue", "q", "--timeout=-1"],
            ["consume", "--queue", "q", "--timeout", "0"],
            ["consume", "--queue", "q", "--count=-3"],
            ["consume", "--queue", "q", "--count", "0"],
            ["tail", "t", "--timeout", "-inf"],
            ["bench", "--duration", "1e300"],
            ["bench", "--duration", "nan"],
            ["bench", "--rate", "1e-300"],
            ["bench", "--rate", "inf"],
            ["bench", "--size", "99999999999"],
            ["bench", "--prefetch", "999999"],
            ["bench", "--publishers", "0"],
            ["demo", "--customers", "0"],
            ["demo", "--idle-timeout", "99999999999"],
            ["demo", "--store", "mysql://user:secret@h/d"],
            ["dead-letters", "list", "--queue", "q", "--limit", "0"],
            ["dead-letters", "show", "x", "--queue", "q", "--limit=-1"],
        ])
        func badNumbersAreUsageErrorsNotCrashes(arguments: [String]) async throws {
            let run = try await courier(arguments, transport: "memory://")
            #expect(run.status == 64, "courier \(arguments): exit \(run.status), \(run.errors)")
            let option = arguments.first { $0.hasPrefix("--") && $0 != "--queue" }!.split(separator: "=")[0]
            #expect(run.errors.contains(option), "the message names \(option): \(run.errors)")
        }

        /// `seq 1 100001 | courier send q --transport memory://` hung: the queue was full and no
        /// consumer can exist in that process. Now it fails at once with queueFull naming the
        /// capacity, whether the bound is the message count or the bytes.
        @Test func oneShotCommandsOnMemoryNeverHangAtCapacity() async throws {
            let lines = (1...100_001).map(String.init).joined(separator: "\n") + "\n"
            let run = try await Started(["send", "q"], input: lines, transport: "memory://").finish(within: .seconds(60))
            #expect(run.status == 1, "\(run.errors)")
            #expect(run.errors.contains("queueFull") && run.errors.contains("100000 messages"), "\(run.errors)")
            let small = try await courier(["publish", "t"], input: "1\n2\n3\n", transport: "memory://?capacity=2&overflow=backpressure")
            #expect(small.status == 0, "a topic without groups keeps only its retention: \(small.errors)")
            let bytes = try await courier(["send", "q"], input: "0123456789\nabcdefghij\n", transport: "memory://?capacity_bytes=15")
            #expect(bytes.status == 1 && bytes.errors.contains("15 payload bytes"), "\(bytes.errors)")
        }

        /// `--log-level` and `COURIER_LOG_LEVEL`: librdkafka's connection failures are info lines,
        /// shown only when asked for; a bad level is a usage error.
        @Test func theLogLevelIsAnOptionAndLogsGoToStandardError() async throws {
            let quiet = try await courier(["send", "q", "x"], transport: "kafka://127.0.0.1:1")
            #expect(quiet.status == 1 && quiet.errors.contains("unreachable"), "\(quiet.errors)")
            #expect(!quiet.errors.contains("Connect to"), "librdkafka's connection lines stay below the default level: \(quiet.errors)")
            #expect(quiet.output.isEmpty)
            let verbose = try await courier(["send", "q", "x", "--log-level", "info"], transport: "kafka://127.0.0.1:1")
            #expect(verbose.errors.contains("Connect to"), "\(verbose.errors)")
            #expect(verbose.output.isEmpty, "logs never go to standard output")
            let bad = try await courier(["send", "q", "x", "--log-level", "loud"], transport: "memory://")
            #expect(bad.status == 64 && bad.errors.contains("--log-level is 'loud'"), "\(bad.errors)")
            setenv("COURIER_LOG_LEVEL", "nope", 1)
            defer { unsetenv("COURIER_LOG_LEVEL") }
            let badEnvironment = try await courier(["send", "q", "x"], transport: "memory://")
            #expect(badEnvironment.status == 64 && badEnvironment.errors.contains("COURIER_LOG_LEVEL"), "\(badEnvironment.errors)")
        }

        /// A payload that is not UTF-8 is printed losslessly by `consume --json`: base64, with a
        /// field saying so (it was replaced by U+FFFD).
        @Test func consumeJSONPrintsNonUTF8PayloadsLosslessly() async throws {
            let queue = unique("binary")
            let transport = try await RabbitMQBroker.connect()
            try await transport.withShutdown {
                try await $0.send([Envelope(payload: [0xFF, 0xFE, 0x00, 0x41]), Envelope(text: "plain")], to: queue)
            }
            let run = try await courier(["consume", "--queue", queue, "--count", "2", "--json", "--timeout", "20"])
            #expect(run.status == 0, "\(run.errors)")
            let objects = run.lines.compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
            #expect(objects.count == 2)
            #expect(objects.first?["payload"] as? String == Data([0xFF, 0xFE, 0x00, 0x41]).base64EncodedString())
            #expect(objects.first?["payloadEncoding"] as? String == "base64")
            #expect(objects.last?["payload"] as? String == "plain")
            #expect(objects.last?["payloadEncoding"] == nil)
        }

        /// `bench --bus --poison`: the transport's run, the bus's clean and poisoned runs, every
        /// clean command handled, the poisoned ones counted (every tenth but the last), as
        /// JSON; `--poison` alone is a usage error.
        @Test func theBusBenchmarkRunsCleanAndPoisoned() async throws {
            let run = try await courier(["bench", "--bus", "--messages", "200", "--poison", "10", "--json"], transport: "memory://")
            #expect(run.status == 0, "\(run.errors)")
            let runs = try #require(try JSONSerialization.jsonObject(with: Data(run.output.utf8)) as? [[String: Any]], "\(run.output)")
            #expect(runs.map { $0["label"] as? String } == ["transport", "bus", "poisoned"])
            #expect(runs.map { $0["poisoned"] as? Int } == [0, 0, 19])
            #expect(runs.allSatisfy { $0["messages"] as? Int == 200 })
            let alone = try await courier(["bench", "--poison", "10"], transport: "memory://")
            #expect(alone.status == 64 && alone.errors.contains("--poison goes with --bus"), "\(alone.errors)")
        }
    }
}
