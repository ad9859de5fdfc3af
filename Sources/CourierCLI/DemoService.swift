import ArgumentParser
import Courier
import CourierBus
import CourierOutbox
import Foundation
import Synchronization

/// One service of the demo as its own process, with its own database: the crash tests run
/// these, kill them with SIGKILL and start them again (hidden from help).
///
/// - `web-store` registers customers 1...N that its table does not hold yet, each in one
///   transaction with its `CustomerRegistered` in the outbox, prints `committed <id>`, lets its
///   relay publish every row, prints `relayed` and exits.
/// - `marketing` stores the customers of `--run-id` through its inbox, prints `ready` once
///   subscribed and `handled <n>` after each commit, and exits with `stored <n> duplicated <d>`
///   once it holds N customers.
///
/// `--crash-after K` makes the process SIGKILL itself right after its K-th commit of this run:
/// the web store between a commit and its publish, marketing between a commit and its ack.
struct DemoService: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo-service",
        abstract: "Run one service of the demo with its own database (for crash tests).",
        shouldDisplay: false
    )

    enum Role: String, ExpressibleByArgument, CaseIterable {
        case webStore = "web-store"
        case marketing
    }

    @OptionGroup var transportOptions: TransportOptions

    @Argument(help: "web-store or marketing.")
    var role: Role

    @Option(help: "The service's database: a SQLite file path or a postgres:// URL.")
    var store: String

    @Option(help: "Prefix of the service's tables.")
    var prefix: String

    @Option(help: "Customers 1...N.")
    var customers: Int

    @Option(help: "The run the customers belong to.")
    var runID: String

    @Option(help: "Marketing's consumer group.")
    var group: String = "marketing"

    @Option(help: "SIGKILL this process right after its K-th commit.")
    var crashAfter: Int?

    @Option(help: "Seconds without progress before giving up.")
    var idleTimeout: Int = 60

    func validate() throws {
        try NumericOptions.atLeastOne(customers, "--customers", maximum: 10_000_000)
        if let crashAfter { try NumericOptions.atLeastOne(crashAfter, "--crash-after", maximum: 10_000_000) }
    }

    func run() async throws {
        let console = Console()
        let crash = CrashAfter(crashAfter)
        var configuration = MessageBus.Configuration(source: "/\(role.rawValue)")
        if role == .marketing { configuration.middleware = [crash, HandledCounter(console: console)] }
        let bus = MessageBus(transport: try await transportOptions.connect(), configuration: configuration)
        let database = try await ServiceDatabases.open(store, prefix: prefix, bus: bus)
        do {
            switch role {
            case .webStore: try await runWebStore(database, bus: bus, console: console, crash: crash)
            case .marketing: try await runMarketing(database, bus: bus, console: console)
            }
        } catch {
            try? await bus.shutdown()
            await database.close()
            throw error
        }
        try await bus.shutdown()
        await database.close()
    }

    private func runWebStore(_ database: any ServiceDatabase, bus: MessageBus, console: Console, crash: CrashAfter) async throws {
        let relay = database.relay(options: OutboxRelay.Options())
        let relaying = Task { try await relay.run() }
        let existing = try await database.customers()
        for id in 1...customers where existing[id] == nil {
            try await database.register(
                CustomerRegistered(
                    runID: runID, customerID: id, name: DemoScenario.names[(id - 1) % DemoScenario.names.count],
                    email: "customer\(id)@example.com"))
            console.line("committed \(id)")
            crash.committed()
        }
        try await waitForProgress(console: console) { try await database.backlog().count == 0 }
        console.line("relayed")
        relaying.cancel()
        _ = try? await relaying.value
    }

    private func runMarketing(_ database: any ServiceDatabase, bus: MessageBus, console: Console) async throws {
        var options = HandlerOptions()
        options.retryPolicy = RetryPolicy(immediateRetries: 0, delayedRetries: 20, initialDelay: .milliseconds(100))
        try await database.storeCustomers(of: runID, bus: bus, group: group, options: options)
        console.line("ready")
        try await waitForProgress(console: console) { try await database.customers().count >= customers }
        // A little longer: a duplicate effect would show as a count above one.
        try await Task.sleep(for: .seconds(1))
        let stored = try await database.customers()
        console.line("stored \(stored.count) duplicated \(stored.values.reduce(0) { $0 + max(0, $1 - 1) })")
    }

    /// Polls `done` until it holds; fails after `--idle-timeout` seconds.
    private func waitForProgress(console: Console, _ done: () async throws -> Bool) async throws {
        let deadline = ContinuousClock.now + .seconds(idleTimeout)
        while try await !done() {
            guard ContinuousClock.now < deadline else {
                throw CourierError(.timeout, "\(role.rawValue): not done within \(idleTimeout) seconds")
            }
            try await Task.sleep(for: .milliseconds(50))
        }
    }
}

/// SIGKILLs the process right after its K-th commit: as a middleware, once the handler (and
/// the inbox's commit in it) returned and before the bus acks.
final class CrashAfter: BusMiddleware, Sendable {
    private let limit: Int?
    private let count = Atomic(0)

    init(_ limit: Int?) { self.limit = limit }

    func committed() {
        guard let limit else { return }
        if count.add(1, ordering: .relaxed).newValue >= limit {
            fflush(nil)
            kill(getpid(), SIGKILL)
        }
    }

    func handle(_ message: InboundMessage, next: (InboundMessage) async throws -> Void) async throws {
        try await next(message)
        committed()
    }
}

/// Prints `handled <n>` after each handler call that returned (its commit done).
final class HandledCounter: BusMiddleware, Sendable {
    let console: Console
    private let count = Atomic(0)

    init(console: Console) { self.console = console }

    func handle(_ message: InboundMessage, next: (InboundMessage) async throws -> Void) async throws {
        try await next(message)
        console.line("handled \(count.add(1, ordering: .relaxed).newValue)")
    }
}
