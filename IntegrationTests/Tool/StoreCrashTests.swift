import Courier
import Foundation
import Testing

/// The outbox and the inbox across process crashes: the demo's web store and marketing run as
/// their own `courier demo-service` processes, each with its own database, and SIGKILL
/// themselves right after a commit — the web store before the relay publishes what it
/// committed, marketing before the bus acks what it handled. Started again, every customer
/// arrives and is stored exactly once. On RabbitMQ and Kafka, with SQLite and PostgreSQL.
extension BrokerIntegration {
    @Suite("Crashes with an outbox and an inbox", .serialized)
    struct StoreCrashTests {
        typealias Started = CourierToolTests.Started

        static let customers = 400

        enum Store: CustomStringConvertible {
            case sqlite
            case postgres

            var description: String { self == .sqlite ? "SQLite" : "PostgreSQL" }

            /// The `--store` value for one service of one run.
            func location(_ service: String, runID: String) -> String {
                switch self {
                case .sqlite: FileManager.default.temporaryDirectory.appendingPathComponent("courier-\(runID)-\(service).sqlite").path
                case .postgres: PostgresDatabase.url
                }
            }
        }

        @Test(arguments: [Store.sqlite, .postgres])
        func onRabbitMQ(_ store: Store) async throws {
            try await crashAndRecover(transport: RabbitMQBroker.url, store: store)
        }

        @Test(arguments: [Store.sqlite, .postgres])
        func onKafka(_ store: Store) async throws {
            try await crashAndRecover(transport: KafkaBroker.url(), store: store)
        }

        /// Waits until `started` printed a line equal to `line` (or died).
        private func waitFor(_ line: String, in started: Started, limit: Duration = .seconds(90)) async throws {
            let deadline = ContinuousClock.now + limit
            while ContinuousClock.now < deadline {
                let output = (try? String(contentsOf: started.output, encoding: .utf8)) ?? ""
                if output.split(separator: "\n").contains(where: { $0 == line }) { return }
                if !started.process.isRunning {
                    Issue.record("courier exited before printing \(line): \(started.errorText)\n\(output.suffix(500))")
                    return
                }
                try await Task.sleep(for: .milliseconds(50))
            }
            Issue.record("courier did not print \(line) within \(limit): \(started.errorText)")
        }

        private func crashAndRecover(transport: String, store: Store) async throws {
            let runID = MessageID.random().prefix(8).lowercased().filter { $0.isLetter || $0.isNumber }
            let n = Self.customers
            let common = ["--run-id", runID, "--customers", "\(n)", "--group", "crash-\(runID)", "--idle-timeout", "90"]
            let web = ["demo-service", "web-store", "--store", store.location("web", runID: runID), "--prefix", "w\(runID)"] + common
            let marketing =
                ["demo-service", "marketing", "--store", store.location("marketing", runID: runID), "--prefix", "m\(runID)"] + common
            let situation = "\(TransportURL.redacted(transport)) with \(store)"
            defer {
                if store == .sqlite {
                    for service in ["web", "marketing"] {
                        for suffix in ["", "-wal", "-shm"] {
                            try? FileManager.default.removeItem(atPath: store.location(service, runID: runID) + suffix)
                        }
                    }
                }
            }

            // Marketing dies right after its 100th commit, before the ack; the web store right
            // after its 200th commit, before its relay publishes it.
            let marketing1 = try Started(marketing + ["--crash-after", "100"], input: nil, transport: transport)
            try await waitFor("ready", in: marketing1)
            let web1 = try await Started(web + ["--crash-after", "200"], input: nil, transport: transport).finish(within: .seconds(120))
            let crashedMarketing = try await marketing1.finish(within: .seconds(120))
            #expect(web1.status == SIGKILL, "the web store killed itself (\(situation)): \(web1.errors)")
            #expect(web1.lines.filter { $0.hasPrefix("committed ") }.count == 200)
            #expect(crashedMarketing.status == SIGKILL, "marketing killed itself (\(situation)): \(crashedMarketing.errors)")
            #expect(crashedMarketing.lines.last == "handled 100")

            // Both again: the web store commits the rest, its relay publishes every row the
            // crash left unsent; marketing skips what its inbox recorded.
            let marketing2 = try Started(marketing, input: nil, transport: transport)
            try await waitFor("ready", in: marketing2)
            let web2 = try await Started(web, input: nil, transport: transport).finish(within: .seconds(120))
            #expect(web2.status == 0, "\(situation): \(web2.errors)")
            #expect(web2.lines.first == "committed 201", "the web store resumed after what it had committed")
            #expect(web2.lines.last == "relayed")
            let recovered = try await marketing2.finish(within: .seconds(120))
            #expect(recovered.status == 0, "\(situation): \(recovered.errors)\n\(recovered.output.suffix(300))")
            #expect(recovered.lines.last == "stored \(n) duplicated 0", "every customer stored exactly once (\(situation))")
        }
    }
}
