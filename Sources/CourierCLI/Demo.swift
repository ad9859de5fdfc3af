import ArgumentParser
import Courier
import CourierBus
import CourierOutbox
import CourierTransports
import Foundation
import Logging
import Synchronization

/// The integration scenario of DESIGN.md §4, end to end on the message bus.
///
/// A web store registers customers and publishes `CustomerRegistered` events; a transformer
/// (``MessageBus/transform(_:group:options:_:)``), subscribed as its own group, turns each into
/// a `CreateCustomer` command, and the bus acks the event only once the command is
/// confirmed; a marketing service handles the command and stores the customer. Each service
/// has its own bus and transport client, as separate processes would. The summary checks that every customer
/// arrived exactly once.
///
/// With a store (SQLite by default, or PostgreSQL), the web store commits each customer with its
/// event in its outbox, a relay publishes it, and marketing stores each customer in the
/// transaction its inbox records the command in; the summary's counts come from the databases.
struct Demo: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the web store → transformer → marketing integration scenario.",
        discussion: """
            Examples:
              courier demo
              courier demo --customers 100 --quiet
              courier demo --transport amqp://guest:guest@localhost:5672/
              courier demo --store postgres://courier:courier@127.0.0.1:5433/courier
            """
    )

    @OptionGroup var transportOptions: TransportOptions

    @Option(help: "How many customers the web store registers.")
    var customers: Int = 10

    @Option(help: "Seconds to wait with no progress before giving up.")
    var idleTimeout: Int = 15

    @Flag(help: "Print only the summary, not every step of the flow.")
    var quiet = false

    @Option(
        help: ArgumentHelp(
            "Where the services keep their customers: sqlite (temporary files, printed), a postgres:// URL, or none (in memory, no outbox or inbox).",
            valueName: "sqlite|postgres://…|none"))
    var store = "sqlite"

    func validate() throws {
        try NumericOptions.atLeastOne(customers, "--customers", maximum: 100_000_000)
        try NumericOptions.atLeastOne(idleTimeout, "--idle-timeout", maximum: Int(NumericOptions.maximumSeconds))
        guard store == "sqlite" || store == "none" || store.hasPrefix("postgres://") || store.hasPrefix("postgresql://") else {
            throw ValidationError("--store is '\(TransportURL.redacted(store))'; use sqlite, none or a postgres:// URL")
        }
    }

    func run() async throws {
        let console = Console()
        let url = try transportOptions.parsedURL()
        // The three services need one broker: an unnamed in-memory broker would be private
        // to each, so the demo names one for this run.
        let runID = MessageID.random()
        let shared: TransportURL
        if case .memory(var settings) = url, settings.brokerName == nil {
            settings.brokerName = "courier-demo-\(runID.prefix(8))"
            shared = .memory(settings)
        } else {
            shared = url
        }
        console.line("courier demo — \(url) — \(customers) customers")
        let scenario = DemoScenario(
            connect: { try await Transports.connect(shared) }, console: console, verbose: !quiet, runID: runID, store: store)
        let summary = try await scenario.run(customers: customers, idleTimeout: .seconds(idleTimeout))
        console.line(summary.report)
        if !summary.everyCustomerExactlyOnce { throw ExitCode(1) }
    }
}

/// `CustomerRegistered`: the web store's integration event.
struct CustomerRegistered: IntegrationEvent {
    static let topic = "web-store.customer-registered"
    var runID: String
    var customerID: Int
    var name: String
    var email: String
    var messageKey: String? { String(customerID) }
}

/// `CreateCustomer`: the command the transformer sends to marketing.
struct CreateCustomer: IntegrationCommand {
    static let queue = "marketing.create-customer"
    var runID: String
    var customerID: Int
    var fullName: String
    var email: String
    var source: String
    var messageKey: String? { String(customerID) }
}

struct DemoSummary: Sendable {
    /// Customers the web store was asked to register.
    var requested: Int
    var registered: Int
    var transformed: Int
    var handled: Int
    var duplicates: Int
    /// How often each customer was stored, by id.
    var stored: [Int: Int]
    /// Where the numbers come from: the databases, or the demo's own counters.
    var source: String
    var elapsed: Duration

    var missing: [Int] { (1...requested).filter { stored[$0] == nil } }
    var storedTwice: Int { stored.values.filter { $0 > 1 }.count }
    var everyCustomerExactlyOnce: Bool { registered == requested && stored.count == requested && missing.isEmpty && storedTwice == 0 }

    var report: String {
        var lines = [
            "",
            "Summary (\(String(format: "%.1f", elapsed.milliseconds)) ms; counts from \(source))",
            "  customers registered (events published)   \(registered)",
            "  events transformed into commands          \(transformed)",
            "  commands handled by marketing             \(handled) (\(duplicates) redelivered duplicates ignored)",
            "  customers stored                          \(stored.count)\(storedTwice > 0 ? " (\(storedTwice) stored more than once)" : "")",
            "  missing                                   \(missing.count)\(missing.isEmpty ? "" : ": " + missing.prefix(20).map(String.init).joined(separator: ", "))",
        ]
        lines.append(everyCustomerExactlyOnce ? "  ✔ every customer arrived exactly once" : "  ✘ not every customer arrived exactly once")
        return lines.joined(separator: "\n")
    }
}

/// The three services of the demo, each with its own bus and transport client.
struct DemoScenario: Sendable {
    static let transformerGroup = "marketing-transformer"

    let connect: @Sendable () async throws -> any Transport
    let console: Console
    let verbose: Bool
    let runID: String
    /// `sqlite`, a `postgres://` URL, or `none`.
    let store: String
    private let start = ContinuousClock.now

    init(
        connect: @escaping @Sendable () async throws -> any Transport, console: Console, verbose: Bool, runID: String,
        store: String = "none"
    ) {
        self.connect = connect
        self.console = console
        self.verbose = verbose
        self.runID = runID
        self.store = store
    }

    /// The web store's and marketing's databases, or nil without a store.
    private func databases(webStore: MessageBus, marketing: MessageBus) async throws -> (any ServiceDatabase, any ServiceDatabase)? {
        let run = runID.prefix(8).lowercased()
        switch store {
        case "none":
            return nil
        case "sqlite":
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent("courier-demo-\(run)")
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            let web = try await ServiceDatabases.open(
                directory.appendingPathComponent("web-store.sqlite").path, prefix: "web", bus: webStore)
            return (
                web,
                try await ServiceDatabases.open(
                    directory.appendingPathComponent("marketing.sqlite").path, prefix: "marketing", bus: marketing)
            )
        default:
            let prefix = "demo_\(run.filter { $0.isLetter || $0.isNumber })"
            let web = try await ServiceDatabases.open(store, prefix: "\(prefix)_web", bus: webStore)
            do {
                return (web, try await ServiceDatabases.open(store, prefix: "\(prefix)_marketing", bus: marketing))
            } catch {
                await web.close()
                throw error
            }
        }
    }

    private func log(_ service: String, _ text: String) {
        guard verbose else { return }
        let padded = service.padding(toLength: 12, withPad: " ", startingAt: 0)
        console.line(since: start) { "\($0)  \(padded) \(text)" }
    }

    private func bus(_ source: String) async throws -> MessageBus {
        var logger = Logger(label: "courier.demo\(source.replacingOccurrences(of: "/", with: "."))")
        logger.logLevel = .warning
        return MessageBus(
            transport: try await connect(),
            configuration: .init(source: source, deduplication: InMemoryDeduplicationStore(), logger: logger)
        )
    }

    func run(customers: Int, idleTimeout: Duration) async throws -> DemoSummary {
        let progress = DemoProgress()
        let webStore = try await bus("/web-store")
        let transformer = try await bus("/marketing-transformer")
        let marketing = try await bus("/marketing")
        let services = [webStore, transformer, marketing]
        let databases: (webStore: any ServiceDatabase, marketing: any ServiceDatabase)?
        do {
            databases = try await self.databases(webStore: webStore, marketing: marketing)
        } catch {
            for service in services { try? await service.shutdown() }
            throw error
        }
        if let databases {
            console.line("web store's database: \(databases.webStore.location)")
            console.line("marketing's database: \(databases.marketing.location)")
        }
        var relaying: Task<Void, any Error>?
        do {
            if let databases {
                // Marketing stores each customer in the transaction its inbox records the
                // command in; the ack follows the commit, a redelivery is acked unhandled.
                try await databases.marketing.createCustomers(of: runID, bus: marketing, options: HandlerOptions()) { command, context in
                    _ = progress.store(command.customerID, name: command.fullName)
                    log(
                        "marketing",
                        "stored customer #\(command.customerID) \(command.fullName) (causation \(context.envelope.causationID?.prefix(8) ?? "-"), inbox)"
                    )
                }
                let relay = databases.webStore.relay(options: OutboxRelay.Options())
                relaying = Task { try await relay.run() }
            } else {
                // Marketing stores each customer; its handler returning acks the command (ack
                // after commit). Redelivered duplicates are skipped by the de-duplication store.
                try await marketing.handle(CreateCustomer.self) { command, context in
                    guard command.runID == runID else { return }  // left over from an earlier run on a durable broker
                    let isNew = progress.store(command.customerID, name: command.fullName)
                    log(
                        "marketing",
                        isNew
                            ? "stored customer #\(command.customerID) \(command.fullName) (causation \(context.envelope.causationID?.prefix(8) ?? "-"))"
                            : "ignored a duplicate of customer #\(command.customerID)")
                }
            }
            // The transformer: each event becomes a command; the bus acks the event only once
            // the command is confirmed, so a crash in between redelivers the event, never loses it.
            // Its group exists before the first event: a topic with no group drops its events.
            try await transformer.transform(CustomerRegistered.self, group: Self.transformerGroup) { event, _ in
                guard event.runID == runID else { return [] }
                progress.transformed()
                log(
                    "transformer",
                    "\(CustomerRegistered.messageType) #\(event.customerID) → \(CreateCustomer.messageType) (event acked once confirmed)")
                return [
                    .send(
                        CreateCustomer(
                            runID: runID, customerID: event.customerID, fullName: event.name, email: event.email, source: "web-store"))
                ]
            }
            for customerID in 1...customers {
                let customer = CustomerRegistered(
                    runID: runID, customerID: customerID,
                    name: Self.names[(customerID - 1) % Self.names.count], email: "customer\(customerID)@example.com"
                )
                if let databases {
                    try await databases.webStore.register(customer)
                    log(
                        "web-store",
                        "registered #\(customerID) \(customer.name) → committed with \(CustomerRegistered.messageType) in its outbox")
                } else {
                    try await webStore.publish(customer)
                    log("web-store", "registered #\(customerID) \(customer.name) → published \(CustomerRegistered.messageType)")
                }
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
        } catch {
            relaying?.cancel()
            for service in services { try? await service.shutdown() }
            if let databases { for database in [databases.webStore, databases.marketing] { await database.close() } }
            throw error
        }
        relaying?.cancel()
        _ = try? await relaying?.value
        for service in services { try await service.shutdown() }
        let snapshot = progress.snapshot
        var summary = DemoSummary(
            requested: customers,
            registered: customers,
            transformed: snapshot.transformed,
            handled: snapshot.handled,
            duplicates: snapshot.duplicates,
            stored: snapshot.stored.mapValues { _ in 1 },
            source: "the demo's counters",
            elapsed: ContinuousClock.now - start
        )
        if let databases {
            do {
                summary.registered = try await databases.webStore.customers().count
                summary.stored = try await databases.marketing.customers()
            } catch {
                for database in [databases.webStore, databases.marketing] { await database.close() }
                throw error
            }
            for database in [databases.webStore, databases.marketing] { await database.close() }
            summary.source = "the databases"
        }
        return summary
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
