import Courier
import Foundation
import Synchronization

/// The ``MessageBus`` scenarios every transport runs: the bus's promises (typed contracts,
/// transformer, retries, poison handling, per-key concurrency, graceful shutdown) kept on
/// that broker, end to end.
public enum BusScenario: String, CaseIterable, Sendable, CustomStringConvertible {
    case eventsCommandsAndTransformer = "B1. events, commands and a transformer"
    case retriesThenDeadLetter = "B2. retries, then dead letter"
    case poisonMessages = "B3. poison and foreign messages"
    case perKeyConcurrency = "B4. concurrency with per-key order"
    case gracefulShutdown = "B5. graceful shutdown loses nothing"

    public var description: String { rawValue }
}

/// A failed bus scenario.
public struct BusConformanceFailure: Error, Sendable, CustomStringConvertible {
    public let scenario: BusScenario
    public let message: String
    public var description: String { "FAILED  \(scenario): \(message)" }
}

/// Runs ``BusScenario``s on the transports `makeTransport` connects (each call a new client
/// of one broker, as for ``ConformanceSuite``).
///
/// ```swift
/// let bus = BusConformance { try await RabbitMQTransport.connect(configuration) }
/// for scenario in BusScenario.allCases { print(try await bus.run(scenario)) }
/// ```
public struct BusConformance: Sendable {
    let makeTransport: @Sendable () async throws -> any Transport
    /// How long a scenario waits without progress before it fails.
    public var idleTimeout: Duration

    /// Creates the runner.
    public init(idleTimeout: Duration = .seconds(20), makeTransport: @escaping @Sendable () async throws -> any Transport) {
        self.idleTimeout = idleTimeout
        self.makeTransport = makeTransport
    }

    /// Runs `scenario`: returns a one-line report, or throws ``BusConformanceFailure``.
    public func run(_ scenario: BusScenario) async throws -> String {
        let start = ContinuousClock.now
        let run = BusRun(scenario: scenario, suite: self)
        let summary: String
        switch scenario {
        case .eventsCommandsAndTransformer: summary = try await run.eventsCommandsAndTransformer()
        case .retriesThenDeadLetter: summary = try await run.retriesThenDeadLetter()
        case .poisonMessages: summary = try await run.poisonMessages()
        case .perKeyConcurrency: summary = try await run.perKeyConcurrency()
        case .gracefulShutdown: summary = try await run.gracefulShutdown()
        }
        let milliseconds = (ContinuousClock.now - start).components.seconds * 1000 + (ContinuousClock.now - start).components.attoseconds / 1_000_000_000_000_000
        return "PASSED  \(scenario) — \(summary) (\(milliseconds) ms)"
    }

    /// Runs `scenario` for a test target that records failures: the line to print and the
    /// failure, if any.
    public func outcome(of scenario: BusScenario) async throws -> (line: String, failure: BusConformanceFailure?) {
        do {
            return (try await run(scenario), nil)
        } catch let failure as BusConformanceFailure {
            return ("\(failure)", failure)
        }
    }
}

// MARK: Contracts (names unique per process, so reruns on one broker do not meet)

enum BusNames {
    static let tag = String(MessageID.random().prefix(8)).lowercased()
    static func name(_ suffix: String) -> String { "courier-bus-\(tag).\(suffix)" }
}

struct BusCustomerRegistered: IntegrationEvent {
    static var topic: String { BusNames.name("customer-registered") }
    static var messageName: String { "CustomerRegistered" }
    var customer: Int
    var messageKey: String? { "customer-\(customer)" }
}

struct BusCreateCustomer: IntegrationCommand {
    static var queue: String { BusNames.name("create-customer") }
    static var messageName: String { "CreateCustomer" }
    var customer: Int
    var messageKey: String? { "customer-\(customer)" }
}

struct BusChargeCard: IntegrationCommand {
    static var queue: String { BusNames.name("charge-card") }
    static var messageName: String { "ChargeCard" }
    var payment: Int
    var fails: Bool
}

struct BusImportRow: IntegrationCommand {
    static var queue: String { BusNames.name("import-row") }
    static var messageName: String { "ImportRow" }
    var row: Int
}

struct BusStockChanged: IntegrationEvent {
    static var topic: String { BusNames.name("stock-changed") }
    static var messageName: String { "StockChanged" }
    var sku: String
    var sequence: Int
    var messageKey: String? { sku }
}

struct BusShipOrder: IntegrationCommand {
    static var queue: String { BusNames.name("ship-order") }
    static var messageName: String { "ShipOrder" }
    var order: Int
}

struct BusHandlerFailure: Error, CustomStringConvertible {
    var description: String { "the payment provider refused the card" }
}

// MARK: The scenarios

private struct BusRun {
    let scenario: BusScenario
    let suite: BusConformance

    func check(_ condition: Bool, _ message: @autoclosure () -> String) throws {
        if !condition { throw BusConformanceFailure(scenario: scenario, message: message()) }
    }

    func bus(_ configuration: MessageBus.Configuration = MessageBus.Configuration()) async throws -> MessageBus {
        MessageBus(transport: try await suite.makeTransport(), configuration: configuration)
    }

    /// Waits until `done()`; fails after `idleTimeout` without `progress()` changing.
    func wait(_ what: String, progress: @Sendable () -> Int, until done: @Sendable () -> Bool) async throws {
        var last = progress()
        var lastChange = ContinuousClock.now
        while !done() {
            try await Task.sleep(for: .milliseconds(10))
            let now = progress()
            if now != last {
                last = now
                lastChange = .now
            } else if ContinuousClock.now - lastChange > suite.idleTimeout {
                throw BusConformanceFailure(scenario: scenario, message: "no progress for \(suite.idleTimeout) waiting for \(what) (at \(now))")
            }
        }
    }

    /// Reads `count` dead letters of `origin` with a new transport client.
    func deadLetters(of origin: DeliveryOrigin, count: Int) async throws -> [Envelope] {
        let transport = try await suite.makeTransport()
        return try await transport.withShutdown { transport in
            let queue = try await transport.consume(queue: transport.deadLetterQueue(for: origin))
            let letters = Locked<[Envelope]>([])
            let reader = Task {
                for try await delivery in queue {
                    try await delivery.ack()
                    if letters.withLock({ $0.append(delivery.envelope); return $0.count }) == count { break }
                }
            }
            defer { reader.cancel() }
            try await wait("\(count) dead letters of \(origin)", progress: { letters.value.count }, until: { letters.value.count >= count })
            await queue.close()
            return letters.value
        }
    }

    func eventsCommandsAndTransformer() async throws -> String {
        let customers = 100
        let store = try await bus(MessageBus.Configuration(source: "/web-store"))
        let transformer = try await bus(MessageBus.Configuration(source: "/transformer"))
        let marketing = try await bus(MessageBus.Configuration(source: "/marketing"))
        struct Seen: Sendable {
            var eventIDs: [Int: String] = [:]
            var commands: [Int: (correlation: String, causation: String?, source: String?)] = [:]
            var duplicates = 0
        }
        let seen = Locked(Seen())
        try await marketing.subscribe(to: BusCustomerRegistered.self, group: "audit") { event, context in
            seen.withLock { $0.eventIDs[event.customer] = context.messageID }
        }
        try await marketing.handle(BusCreateCustomer.self, options: HandlerOptions(concurrency: 4)) { command, context in
            seen.withLock { seen in
                if seen.commands[command.customer] != nil { seen.duplicates += 1 }
                seen.commands[command.customer] = (context.correlationID, context.envelope.causationID, context.headers[CourierHeader.source])
            }
        }
        try await transformer.transform(BusCustomerRegistered.self, group: "transformer", options: HandlerOptions(concurrency: 4)) { event, _ in
            [.send(BusCreateCustomer(customer: event.customer))]
        }
        try await store.publish((0..<customers).map { BusCustomerRegistered(customer: $0) })
        try await wait(
            "\(customers) commands and events", progress: { seen.value.commands.count + seen.value.eventIDs.count },
            until: { seen.value.commands.count == customers && seen.value.eventIDs.count == customers }
        )
        let result = seen.value
        try check(Set(result.commands.keys) == Set(0..<customers), "commands for customers \(Set(0..<customers).subtracting(result.commands.keys).sorted()) are missing")
        for (customer, command) in result.commands {
            let eventID = result.eventIDs[customer]
            try check(command.correlation == eventID, "customer \(customer): correlation \(command.correlation), expected the event's id \(eventID ?? "?")")
            try check(command.causation == eventID, "customer \(customer): causation \(command.causation ?? "none"), expected the event's id")
            try check(command.source == "/transformer", "customer \(customer): source \(command.source ?? "none"), expected /transformer")
        }
        for bus in [store, transformer, marketing] { try await bus.shutdown() }
        return "\(customers) events through a transformer into \(customers) commands, each with the event as correlation and causation, also seen by a second group; \(result.duplicates) duplicates"
    }

    func retriesThenDeadLetter() async throws -> String {
        let policy = RetryPolicy(immediateRetries: 1, delayedRetries: 2, initialDelay: .milliseconds(200), multiplier: 2, jitter: 0)
        let billing = try await bus(MessageBus.Configuration(retryPolicy: policy))
        struct Calls: Sendable {
            var failing: [Int] = []  // attempts of the failing payment's calls
            var good: Set<Int> = []
            var goodBeforeFirstRetry = 0
        }
        let calls = Locked(Calls())
        try await billing.handle(BusChargeCard.self, options: HandlerOptions(concurrency: 2)) { command, context in
            if command.fails {
                calls.withLock { $0.failing.append(context.attempt) }
                throw BusHandlerFailure()
            }
            calls.withLock { calls in
                calls.good.insert(command.payment)
                if calls.failing.allSatisfy({ $0 == 1 }) { calls.goodBeforeFirstRetry += 1 }
            }
        }
        try await billing.send([BusChargeCard(payment: 0, fails: true)] + (1...20).map { BusChargeCard(payment: $0, fails: false) })
        let letters = try await deadLetters(of: .queue(BusChargeCard.queue), count: 1)
        try await wait("20 good payments", progress: { calls.value.good.count }, until: { calls.value.good.count == 20 })
        let result = calls.value
        let letter = letters[0]
        try check(result.failing == [1, 1, 2, 2, 3, 3], "the failing payment's calls had attempts \(result.failing), expected [1, 1, 2, 2, 3, 3]")
        try check(letter.headers[CourierHeader.errorType]?.hasSuffix("BusHandlerFailure") == true, "dead letter error type \(letter.headers[CourierHeader.errorType] ?? "missing")")
        try check(letter.headers[CourierHeader.errorMessage] == "the payment provider refused the card", "dead letter error message \(letter.headers[CourierHeader.errorMessage] ?? "missing")")
        try check(letter.headers[CourierHeader.deadLetterAttempts] == "3", "dead letter attempts \(letter.headers[CourierHeader.deadLetterAttempts] ?? "missing"), expected 3")
        try check(letter.type == BusChargeCard.messageType, "the dead letter is not the original message (type \(letter.type ?? "none"))")
        try check(result.goodBeforeFirstRetry > 0, "no other payment was handled while the failing one waited for its retry")
        try await billing.shutdown()
        return "6 calls (2 per delivery, 3 deliveries 200 ms and 400 ms apart), then dead-lettered with the error's type and message; \(result.goodBeforeFirstRetry) other payments handled while it waited"
    }

    func poisonMessages() async throws -> String {
        let importer = try await bus()
        let rows = Locked<[Int]>([])
        try await importer.handle(BusImportRow.self) { command, _ in rows.withLock { $0.append(command.row) } }
        var garbage = Envelope(text: "{\"row\": ")
        garbage.type = BusImportRow.messageType
        garbage.contentType = "application/json"
        var foreign = Envelope(text: "{\"row\": 2}")
        foreign.type = "DeleteEverything.v1"
        try await importer.transport.send([garbage, foreign], to: BusImportRow.queue)
        try await importer.send(BusImportRow(row: 3))
        let letters = try await deadLetters(of: .queue(BusImportRow.queue), count: 2)
        try await wait("the good row", progress: { rows.value.count }, until: { rows.value.count == 1 })
        let reasons = Dictionary(letters.map { ($0.id, $0.headers[CourierHeader.deadLetterReason] ?? "") }, uniquingKeysWith: { a, _ in a })
        try check(reasons[garbage.id]?.contains("cannot be decoded") == true, "the undecodable payload's dead letter says \(reasons[garbage.id] ?? "nothing")")
        try check(reasons[foreign.id]?.contains("unknown message type DeleteEverything.v1") == true, "the foreign message's dead letter says \(reasons[foreign.id] ?? "nothing")")
        try check(letters.allSatisfy { $0.headers[CourierHeader.deadLetterAttempts] == "1" }, "poison was retried: attempts \(letters.map { $0.headers[CourierHeader.deadLetterAttempts] ?? "?" })")
        try check(rows.value == [3], "the handler saw rows \(rows.value), expected only [3]")
        try await importer.shutdown()
        return "an undecodable payload and a foreign type dead-lettered on their first attempt with the reason; the good message handled"
    }

    func perKeyConcurrency() async throws -> String {
        let warehouse = try await bus()
        let skus = 8
        let perSKU = 25
        struct Tally: Sendable {
            var running = 0
            var peak = 0
            var busy: Set<String> = []
            var overlaps = 0
            var seen: [String: [Int]] = [:]
            var total = 0
        }
        let tally = Locked(Tally())
        try await warehouse.subscribe(to: BusStockChanged.self, group: "warehouse", options: HandlerOptions(concurrency: 4)) { event, _ in
            tally.withLock { tally in
                tally.running += 1
                tally.peak = max(tally.peak, tally.running)
                if !tally.busy.insert(event.sku).inserted { tally.overlaps += 1 }
                tally.seen[event.sku, default: []].append(event.sequence)
            }
            try await Task.sleep(for: .milliseconds(Int.random(in: 0...3)))
            tally.withLock { tally in
                tally.running -= 1
                tally.busy.remove(event.sku)
                tally.total += 1
            }
        }
        var events: [BusStockChanged] = []
        for sequence in 0..<perSKU {
            for sku in 0..<skus { events.append(BusStockChanged(sku: "sku-\(sku)", sequence: sequence)) }
        }
        try await warehouse.publish(events)
        let expected = skus * perSKU
        try await wait("\(expected) stock changes", progress: { tally.value.total }, until: { tally.value.total >= expected })
        let result = tally.value
        try check(result.overlaps == 0, "\(result.overlaps) times a key was handled twice at once")
        try check(result.peak <= 4, "\(result.peak) handlers ran at once; the limit is 4")
        for (sku, sequences) in result.seen {
            try check(sequences == Array(0..<perSKU), "\(sku) was handled in the order \(sequences)")
        }
        try await warehouse.shutdown()
        return "\(expected) events over \(skus) keys, up to \(result.peak) handlers at once (limit 4), each key one at a time and in order"
    }

    func gracefulShutdown() async throws -> String {
        let orders = 40
        let first = try await bus(MessageBus.Configuration(shutdownDeadline: .seconds(10)))
        let handled = Locked<[Int]>([])
        let started = Locked(0)
        try await first.handle(BusShipOrder.self, options: HandlerOptions(concurrency: 4)) { command, _ in
            started.withLock { $0 += 1 }
            try await Task.sleep(for: .milliseconds(300))
            handled.withLock { $0.append(command.order) }
        }
        try await first.send((0..<orders).map { BusShipOrder(order: $0) })
        try await wait("four running handlers", progress: { started.value }, until: { started.value >= 4 })
        try await first.shutdown()
        let byFirst = handled.value.count
        try check(byFirst == started.value, "\(started.value) handlers started but \(byFirst) finished before the shutdown returned")
        let second = try await bus()
        try await second.handle(BusShipOrder.self, options: HandlerOptions(concurrency: 4)) { command, _ in
            handled.withLock { $0.append(command.order) }
        }
        try await wait("\(orders) orders", progress: { handled.value.count }, until: { Set(handled.value).count == orders })
        try await Task.sleep(for: .milliseconds(300))
        let all = handled.value
        try check(Set(all) == Set(0..<orders), "orders \(Set(0..<orders).subtracting(all).sorted()) were lost")
        try await second.shutdown()
        return "\(byFirst) running handlers finished within the deadline, the other \(orders - byFirst) orders waited for the next instance; none lost, \(all.count - Set(all).count) duplicates"
    }
}
