import ArgumentParser
import Courier
import Foundation
import Synchronization

/// The integration scenario of DESIGN.md §4, end to end on the transport layer.
///
/// A web store registers customers and publishes `CustomerRegistered` events; a transformer,
/// subscribed as its own group, turns each into a `CreateCustomer` command and acks the
/// event only once the command is confirmed; a marketing service consumes the command queue
/// and acks each command after storing the customer. The summary checks that every customer
/// arrived exactly once.
struct Demo: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the web store → transformer → marketing integration scenario.",
        discussion: """
            Examples:
              courier demo
              courier demo --customers 100 --quiet
              courier demo --transport amqp://guest:guest@localhost:5672/
            """
    )

    @OptionGroup var transportOptions: TransportOptions

    @Option(help: "How many customers the web store registers.")
    var customers: Int = 10

    @Option(help: "Seconds to wait with no progress before giving up.")
    var idleTimeout: Int = 15

    @Flag(help: "Print only the summary, not every step of the flow.")
    var quiet = false

    func validate() throws {
        guard customers >= 1 else { throw ValidationError("--customers must be at least 1") }
        guard idleTimeout >= 1 else { throw ValidationError("--idle-timeout must be at least 1") }
    }

    func run() async throws {
        let transport = try await transportOptions.connect()
        let console = Console()
        let url = (try? TransportURL(transportOptions.url).description) ?? TransportURL.redacted(transportOptions.url)
        console.line("courier demo — \(url) — \(customers) customers")
        let scenario = DemoScenario(transport: transport, console: console, verbose: !quiet, runID: MessageID.random())
        let summary: DemoSummary
        do {
            summary = try await scenario.run(customers: customers, idleTimeout: .seconds(idleTimeout))
        } catch {
            try? await transport.shutdown()
            throw error
        }
        try await transport.shutdown()
        console.line(summary.report)
        if !summary.everyCustomerExactlyOnce { throw ExitCode(1) }
    }
}

/// `CustomerRegistered`: the web store's integration event.
struct CustomerRegistered: Codable, Sendable {
    static let type = "CustomerRegistered.v1"
    var runID: String
    var customerID: Int
    var name: String
    var email: String
}

/// `CreateCustomer`: the command the transformer sends to marketing.
struct CreateCustomer: Codable, Sendable {
    static let type = "CreateCustomer.v1"
    var runID: String
    var customerID: Int
    var fullName: String
    var email: String
    var source: String
}

struct DemoSummary: Sendable {
    var registered: Int
    var transformed: Int
    var handled: Int
    var duplicates: Int
    var stored: [Int: String]
    var elapsed: Duration

    var missing: [Int] { (1...registered).filter { stored[$0] == nil } }
    var everyCustomerExactlyOnce: Bool { stored.count == registered && missing.isEmpty }

    var report: String {
        var lines = [
            "",
            "Summary (\(String(format: "%.1f", elapsed.milliseconds)) ms)",
            "  customers registered (events published)   \(registered)",
            "  events transformed (commands confirmed)   \(transformed)",
            "  commands handled by marketing             \(handled) (\(duplicates) redelivered duplicates ignored)",
            "  customers stored                          \(stored.count)",
            "  missing                                   \(missing.count)\(missing.isEmpty ? "" : ": " + missing.prefix(20).map(String.init).joined(separator: ", "))",
        ]
        lines.append(everyCustomerExactlyOnce ? "  ✔ every customer arrived exactly once" : "  ✘ not every customer arrived exactly once")
        return lines.joined(separator: "\n")
    }
}

/// The three services of the demo, wired over one transport.
struct DemoScenario: Sendable {
    static let topic = "web-store.customer-registered"
    static let transformerGroup = "marketing-transformer"
    static let queue = "marketing.create-customer"

    let transport: any Transport
    let console: Console
    let verbose: Bool
    let runID: String
    private let start = ContinuousClock.now

    init(transport: any Transport, console: Console, verbose: Bool, runID: String) {
        self.transport = transport
        self.console = console
        self.verbose = verbose
        self.runID = runID
    }

    private func log(_ service: String, _ text: String) {
        guard verbose else { return }
        let padded = service.padding(toLength: 12, withPad: " ", startingAt: 0)
        console.line(since: start) { "\($0)  \(padded) \(text)" }
    }

    func run(customers: Int, idleTimeout: Duration) async throws -> DemoSummary {
        // The transformer's group exists before the first event: events published to a topic
        // with no group are dropped by design.
        let events = try await transport.subscribe(to: Self.topic, group: Self.transformerGroup)
        let commands = try await transport.consume(queue: Self.queue)
        let progress = DemoProgress()

        let transformer = Task { try await transform(events, progress: progress) }
        let marketing = Task { try await handle(commands, progress: progress) }

        for customerID in 1...customers {
            let customer = CustomerRegistered(
                runID: runID,
                customerID: customerID,
                name: Self.names[(customerID - 1) % Self.names.count],
                email: "customer\(customerID)@example.com"
            )
            var envelope = Envelope(payload: Array(try JSONEncoder().encode(customer)), key: String(customerID))
            envelope.type = CustomerRegistered.type
            envelope.contentType = "application/json"
            envelope.correlationID = envelope.id
            envelope.headers[CourierHeader.source] = "/web-store"
            try await transport.publish(envelope, to: Self.topic)
            log("web-store", "registered #\(customerID) \(customer.name) → published \(CustomerRegistered.type) \(envelope.id.prefix(8))")
        }

        var lastProgress = progress.snapshot.stored.count
        var lastChange = ContinuousClock.now
        while progress.snapshot.stored.count < customers {
            try await Task.sleep(for: .milliseconds(5))
            let now = progress.snapshot.stored.count
            if now != lastProgress {
                lastProgress = now
                lastChange = .now
            } else if ContinuousClock.now - lastChange > idleTimeout {
                break
            }
        }
        await events.close()
        await commands.close()
        try await transformer.value
        try await marketing.value
        let snapshot = progress.snapshot
        return DemoSummary(
            registered: customers,
            transformed: snapshot.transformed,
            handled: snapshot.handled,
            duplicates: snapshot.duplicates,
            stored: snapshot.stored,
            elapsed: ContinuousClock.now - start
        )
    }

    /// The transformer: each event becomes a command; the event is acked only after the
    /// command is confirmed, so a crash in between redelivers the event, never loses it.
    private func transform(_ events: Subscription, progress: DemoProgress) async throws {
        for try await delivery in events {
            let event: CustomerRegistered
            do {
                event = try JSONDecoder().decode(CustomerRegistered.self, from: Data(delivery.envelope.payload))
            } catch {
                try await delivery.deadLetter(reason: "undecodable \(CustomerRegistered.type): \(error)")
                log("transformer", "dead-lettered an undecodable event \(delivery.envelope.id.prefix(8))")
                continue
            }
            guard event.runID == runID else {
                try await delivery.ack()  // left over from an earlier run on a durable broker
                continue
            }
            let command = CreateCustomer(
                runID: runID,
                customerID: event.customerID,
                fullName: event.name,
                email: event.email,
                source: "web-store"
            )
            var envelope = Envelope(payload: Array(try JSONEncoder().encode(command)), key: delivery.envelope.key)
            envelope.type = CreateCustomer.type
            envelope.contentType = "application/json"
            envelope.correlationID = delivery.envelope.correlationID ?? delivery.envelope.id
            envelope.causationID = delivery.envelope.id
            envelope.headers[CourierHeader.source] = "/marketing-transformer"
            try await transport.send(envelope, to: Self.queue)
            try await delivery.ack()
            progress.transformed()
            log("transformer", "\(CustomerRegistered.type) #\(event.customerID) → \(CreateCustomer.type) confirmed → event acked")
        }
    }

    /// Marketing: stores each customer, then acks the command (ack after commit).
    private func handle(_ commands: Subscription, progress: DemoProgress) async throws {
        for try await delivery in commands {
            guard let command = try? JSONDecoder().decode(CreateCustomer.self, from: Data(delivery.envelope.payload)) else {
                try await delivery.deadLetter(reason: "undecodable \(CreateCustomer.type)")
                log("marketing", "dead-lettered an undecodable command \(delivery.envelope.id.prefix(8))")
                continue
            }
            guard command.runID == runID else {
                try await delivery.ack()
                continue
            }
            let isNew = progress.store(command.customerID, name: command.fullName)
            try await delivery.ack()
            log("marketing", isNew
                ? "stored customer #\(command.customerID) \(command.fullName) (causation \(delivery.envelope.causationID?.prefix(8) ?? "-"))"
                : "ignored a duplicate of customer #\(command.customerID)")
        }
    }

    static let names = [
        "Ada Lovelace", "Alan Turing", "Grace Hopper", "Edsger Dijkstra", "Barbara Liskov",
        "Donald Knuth", "Margaret Hamilton", "Leslie Lamport", "Frances Allen", "John Backus",
        "Radia Perlman", "Ken Thompson", "Katherine Johnson", "Niklaus Wirth", "Tony Hoare",
    ]
}

/// What the services have done so far, shared between their tasks.
final class DemoProgress: Sendable {
    struct Snapshot: Sendable {
        var transformed = 0
        var handled = 0
        var duplicates = 0
        var stored: [Int: String] = [:]
    }

    private let state = Mutex(Snapshot())

    var snapshot: Snapshot { state.withLock { $0 } }

    func transformed() {
        state.withLock { $0.transformed += 1 }
    }

    /// Stores a customer; false when it was already stored (a redelivered duplicate).
    func store(_ customerID: Int, name: String) -> Bool {
        state.withLock { state in
            state.handled += 1
            guard state.stored[customerID] == nil else {
                state.duplicates += 1
                return false
            }
            state.stored[customerID] = name
            return true
        }
    }
}
