import Courier
import CourierBus
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
    case deadLetterReplay = "B6. dead letters listed and replayed"
    case exactlyOnceWithInbox = "B7. exactly-once effect with an inbox"
    case healthTellsTheTruth = "B8. health tells the truth"

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
    /// The inbox scenario B7 drives: a store's, or the in-memory reference.
    public var inbox: any ConformanceInbox
    /// Takes the broker (every node) down and brings it back, returning once it is back;
    /// B8 watches the bus's health meanwhile. `nil` (an in-process broker, or a shared
    /// cluster that must not be touched): B8 checks the rest and says so.
    public var brokerOutage: (@Sendable () async throws -> Void)?

    /// Creates the runner.
    public init(
        idleTimeout: Duration = .seconds(20), inbox: any ConformanceInbox = InMemoryConformanceInbox(),
        brokerOutage: (@Sendable () async throws -> Void)? = nil,
        makeTransport: @escaping @Sendable () async throws -> any Transport
    ) {
        self.idleTimeout = idleTimeout
        self.inbox = inbox
        self.brokerOutage = brokerOutage
        self.makeTransport = makeTransport
    }

    /// Runs `scenario`: returns a one-line report, or throws ``BusConformanceFailure``.
    public func run(_ scenario: BusScenario) async throws -> String {
        let start = ContinuousClock.now
        let run = BusRun(scenario: scenario, suite: self)
        let summary = try await BusNames.$run.withValue(BusNames.nextRun()) {
            switch scenario {
            case .eventsCommandsAndTransformer: try await run.eventsCommandsAndTransformer()
            case .retriesThenDeadLetter: try await run.retriesThenDeadLetter()
            case .poisonMessages: try await run.poisonMessages()
            case .perKeyConcurrency: try await run.perKeyConcurrency()
            case .gracefulShutdown: try await run.gracefulShutdown()
            case .deadLetterReplay: try await run.deadLetterReplay()
            case .exactlyOnceWithInbox: try await run.exactlyOnceWithInbox()
            case .healthTellsTheTruth: try await run.healthTellsTheTruth()
            }
        }
        let milliseconds =
            (ContinuousClock.now - start).components.seconds * 1000 + (ContinuousClock.now - start).components.attoseconds
            / 1_000_000_000_000_000
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
    static let process = String(MessageID.random().prefix(8)).lowercased()
    private static let runs = Atomic<Int>(0)
    /// The scenario run the current task belongs to: each run has its own destinations.
    @TaskLocal static var run = 0
    static func nextRun() -> Int { runs.add(1, ordering: .relaxed).newValue }
    static func name(_ suffix: String) -> String { "courier-bus-\(process)-\(run).\(suffix)" }
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

struct BusRefund: IntegrationCommand {
    static var queue: String { BusNames.name("refund") }
    static var messageName: String { "Refund" }
    var refund: Int
    var messageKey: String? { "order-\(refund % 2)" }
}

struct BusPriceChanged: IntegrationEvent {
    static var topic: String { BusNames.name("price-changed") }
    static var messageName: String { "PriceChanged" }
    var product: Int
    var messageKey: String? { "product-\(product % 2)" }
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
                throw BusConformanceFailure(
                    scenario: scenario, message: "no progress for \(suite.idleTimeout) waiting for \(what) (at \(now))")
            }
        }
    }

    /// Waits until the async `check` holds, failing after `idleTimeout` without progress.
    func poll(_ what: String, progress: @Sendable () -> Int, until check: () async throws -> Bool) async throws {
        var last = progress()
        var lastChange = ContinuousClock.now
        while try await !check() {
            try await Task.sleep(for: .milliseconds(100))
            let now = progress()
            if now != last {
                last = now
                lastChange = .now
            } else if ContinuousClock.now - lastChange > suite.idleTimeout {
                throw BusConformanceFailure(
                    scenario: scenario, message: "no progress for \(suite.idleTimeout) waiting for \(what) (at \(now))")
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
                    if letters.withLock({
                        $0.append(delivery.envelope); return $0.count
                    }) == count {
                        break
                    }
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
                seen.commands[command.customer] = (
                    context.correlationID, context.envelope.causationID, context.headers[CourierHeader.source]
                )
            }
        }
        try await transformer.transform(BusCustomerRegistered.self, group: "transformer", options: HandlerOptions(concurrency: 4)) {
            event, _ in
            [.send(BusCreateCustomer(customer: event.customer))]
        }
        try await store.publish((0..<customers).map { BusCustomerRegistered(customer: $0) })
        try await wait(
            "\(customers) commands and events", progress: { seen.value.commands.count + seen.value.eventIDs.count },
            until: { seen.value.commands.count == customers && seen.value.eventIDs.count == customers }
        )
        let result = seen.value
        try check(
            Set(result.commands.keys) == Set(0..<customers),
            "commands for customers \(Set(0..<customers).subtracting(result.commands.keys).sorted()) are missing")
        for (customer, command) in result.commands {
            let eventID = result.eventIDs[customer]
            try check(
                command.correlation == eventID,
                "customer \(customer): correlation \(command.correlation), expected the event's id \(eventID ?? "?")")
            try check(
                command.causation == eventID, "customer \(customer): causation \(command.causation ?? "none"), expected the event's id")
            try check(command.source == "/transformer", "customer \(customer): source \(command.source ?? "none"), expected /transformer")
        }
        for bus in [store, transformer, marketing] { try await bus.shutdown() }
        return
            "\(customers) events through a transformer into \(customers) commands, each with the event as correlation and causation, also seen by a second group; \(result.duplicates) duplicates"
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
        try check(
            result.failing == [1, 1, 2, 2, 3, 3], "the failing payment's calls had attempts \(result.failing), expected [1, 1, 2, 2, 3, 3]")
        try check(
            letter.headers[CourierHeader.errorType]?.hasSuffix("BusHandlerFailure") == true,
            "dead letter error type \(letter.headers[CourierHeader.errorType] ?? "missing")")
        try check(
            letter.headers[CourierHeader.errorMessage] == "the payment provider refused the card",
            "dead letter error message \(letter.headers[CourierHeader.errorMessage] ?? "missing")")
        try check(
            letter.headers[CourierHeader.deadLetterAttempts] == "3",
            "dead letter attempts \(letter.headers[CourierHeader.deadLetterAttempts] ?? "missing"), expected 3")
        try check(letter.type == BusChargeCard.messageType, "the dead letter is not the original message (type \(letter.type ?? "none"))")
        try check(result.goodBeforeFirstRetry > 0, "no other payment was handled while the failing one waited for its retry")
        try await billing.shutdown()
        return
            "6 calls (2 per delivery, 3 deliveries 200 ms and 400 ms apart), then dead-lettered with the error's type and message; \(result.goodBeforeFirstRetry) other payments handled while it waited"
    }

    /// B8: healthy with a fresh registration; a handler failing on every message shows as
    /// `failing` (the bus degraded, still healthy) and recovers with a success; unhealthy while
    /// the broker is down and healthy again after the reconnect (with an outage hook);
    /// unhealthy after shutdown.
    func healthTellsTheTruth() async throws -> String {
        var configuration = MessageBus.Configuration(retryPolicy: RetryPolicy(immediateRetries: 0, delayedRetries: 0))
        configuration.failingAfter = 3
        let billing = try await bus(configuration)
        let failing = Locked(true)
        try await billing.handle(BusChargeCard.self) { _, _ in
            if failing.value { throw BusHandlerFailure() }
        }
        let fresh = await billing.health()
        try check(fresh.isHealthy && !fresh.isDegraded, "a fresh bus is not healthy: \(fresh)")
        try check(fresh.registrations.map(\.state) == [.running], "a fresh registration is not running: \(fresh)")

        try await billing.send((1...3).map { BusChargeCard(payment: $0, fails: true) })
        let failures = Locked(0)
        try await poll("three failures in a row", progress: { failures.value }) {
            let health = await billing.health()
            failures.withLock { $0 = health.registrations.first?.consecutiveFailures ?? 0 }
            return health.registrations.first?.state == .failing
        }
        let degraded = await billing.health()
        try check(degraded.isHealthy && degraded.isDegraded, "a failing handler should leave the bus healthy but degraded: \(degraded)")
        try check(
            degraded.registrations.first?.lastError?.contains("the payment provider refused the card") == true,
            "the failing registration does not say why: \(degraded)")
        failing.withLock { $0 = false }
        try await billing.send(BusChargeCard(payment: 4, fails: false))
        try await poll("a success", progress: { 0 }) {
            await billing.health().registrations.first?.state == .running
        }

        var outage = "no outage hook: the broker is not taken down"
        if let brokerOutage = suite.brokerOutage {
            let sawUnhealthy = Locked(false)
            let watcher = Task {
                while !Task.isCancelled {
                    if !(await billing.health().isHealthy) { sawUnhealthy.withLock { $0 = true } }
                    try? await Task.sleep(for: .milliseconds(100))
                }
            }
            try await brokerOutage()
            let deadline = ContinuousClock.now + .seconds(60)
            while !(await billing.health().isHealthy), ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(100)) }
            watcher.cancel()
            let after = await billing.health()
            try check(sawUnhealthy.value, "the bus never reported unhealthy while the broker was down")
            try check(after.isHealthy, "the bus is not healthy again within 60 s of the broker's return: \(after)")
            outage = "unhealthy while the broker was down, healthy after the reconnect"
        }
        try await billing.shutdown()
        let closed = await billing.health()
        try check(!closed.isHealthy, "a shut-down bus reports healthy: \(closed)")
        return "failing after 3 failures in a row (degraded), running after a success; \(outage); unhealthy after shutdown"
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
        try check(
            reasons[garbage.id]?.contains("cannot be decoded") == true,
            "the undecodable payload's dead letter says \(reasons[garbage.id] ?? "nothing")")
        try check(
            reasons[foreign.id]?.contains("unknown message type DeleteEverything.v1") == true,
            "the foreign message's dead letter says \(reasons[foreign.id] ?? "nothing")")
        try check(
            letters.allSatisfy { $0.headers[CourierHeader.deadLetterAttempts] == "1" },
            "poison was retried: attempts \(letters.map { $0.headers[CourierHeader.deadLetterAttempts] ?? "?" })")
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

    func deadLetterReplay() async throws -> String {
        let count = 6
        let broken = Locked(true)
        let service = try await bus(MessageBus.Configuration(retryPolicy: .none))
        let refunds = Locked<[Int]>([])
        let prices = Locked<[Int]>([])
        let audit = Locked<[Int]>([])
        try await service.handle(BusRefund.self) { command, _ in
            if broken.value { throw BusHandlerFailure() }
            refunds.withLock { $0.append(command.refund) }
        }
        try await service.subscribe(to: BusPriceChanged.self, group: "pricing") { event, _ in
            if broken.value { throw BusHandlerFailure() }
            prices.withLock { $0.append(event.product) }
        }
        try await service.subscribe(to: BusPriceChanged.self, group: "audit") { event, _ in
            audit.withLock { $0.append(event.product) }
        }
        // Keys repeat (two per destination): browsing must show every message, not one per key.
        try await service.send((0..<count).map { BusRefund(refund: $0) })
        try await service.publish((0..<count).map { BusPriceChanged(product: $0) })

        // The operator's tool: another client.
        let tool = try await suite.makeTransport()
        let refundOrigin = DeliveryOrigin.queue(BusRefund.queue)
        let priceOrigin = DeliveryOrigin.topic(BusPriceChanged.topic, group: "pricing")
        let listed = Locked(0)
        try await poll("\(count) dead letters in each dead-letter queue", progress: { listed.value }) {
            let refundLetters = try await tool.browse(queue: tool.deadLetterQueue(for: refundOrigin), limit: 100)
            let priceLetters = try await tool.browse(queue: tool.deadLetterQueue(for: priceOrigin), limit: 100)
            listed.withLock { $0 = refundLetters.count + priceLetters.count }
            return refundLetters.count == count && priceLetters.count == count
        }
        let letters = try await tool.browse(queue: tool.deadLetterQueue(for: refundOrigin), limit: 100)
        try check(Set(letters.map { $0.headers[CourierHeader.errorType] ?? "" }).count == 1, "the dead letters lack the error type")
        try check(letters.allSatisfy { WireFormat.origin(ofDeadLetter: $0) == refundOrigin }, "the dead letters do not name their origin")
        let again = try await tool.browse(queue: tool.deadLetterQueue(for: refundOrigin), limit: 100)
        try check(again.count == count, "browsing took dead letters: \(again.count) of \(count) left after browsing twice")

        broken.withLock { $0 = false }
        let queueReplay = try await tool.replayDeadLetters(of: refundOrigin) { $0.id != letters[0].id }
        try check(
            queueReplay == (count - 1, 1), "replaying all but one refund replayed \(queueReplay.replayed) and kept \(queueReplay.kept)")
        try await wait("\(count - 1) replayed refunds", progress: { refunds.value.count }, until: { refunds.value.count >= count - 1 })
        let kept = try await tool.browse(queue: tool.deadLetterQueue(for: refundOrigin), limit: 100)
        try check(kept.map(\.id) == [letters[0].id], "the dead letter not chosen is not the one left: \(kept.map(\.id))")

        var groupNote: String
        do {
            let groupReplay = try await tool.replayDeadLetters(of: priceOrigin) { _ in true }
            try check(
                groupReplay == (count, 0),
                "replaying the group's dead letters replayed \(groupReplay.replayed) and kept \(groupReplay.kept)")
            try await wait("\(count) replayed price changes", progress: { prices.value.count }, until: { prices.value.count >= count })
            try await Task.sleep(for: .milliseconds(500))
            try check(
                audit.value.count == count,
                "the audit group got \(audit.value.count) price changes, expected \(count): a replay reached another group")
            try check(Set(prices.value) == Set(0..<count), "the pricing group got \(prices.value.sorted())")
            groupNote = "a group's \(count) dead letters replayed to that group alone (the topic's other group saw each once)"
        } catch let error as CourierError where error.code == .unsupportedCapability {
            groupNote = "replaying to one group is not supported here (\(error.message))"
        }
        try await tool.shutdown()
        try await service.shutdown()
        return
            "\(count) dead letters per queue listed twice without being taken (keys repeating); \(count - 1) chosen refunds replayed and handled, 1 kept; \(groupNote)"
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
        return
            "\(byFirst) running handlers finished within the deadline, the other \(orders - byFirst) orders waited for the next instance; none lost, \(all.count - Set(all).count) duplicates"
    }

    /// Commands whose handling commits but whose ack never comes (a middleware throws after
    /// the commit, as a process killed there would leave them) and commands whose commit fails
    /// once: redelivered, each effect still counts once.
    func exactlyOnceWithInbox() async throws -> String {
        let commands = 60
        let lostAcks = LoseAckAfterCommit()
        let bus = try await bus(MessageBus.Configuration(middleware: [lostAcks]))
        var options = HandlerOptions(concurrency: 4)
        options.retryPolicy = RetryPolicy(immediateRetries: 0, delayedRetries: 10, initialDelay: .milliseconds(50), maxDelay: .seconds(1))
        let failedCommits = Locked<Set<Int>>([])
        let inbox = suite.inbox
        try await inbox.handle(BusImportRow.self, on: bus, options: options, effect: { $0.row }) { command in
            guard command.row % 3 == 0, failedCommits.withLock({ $0.insert(command.row).inserted }) else { return }
            throw CourierError(.timeout, "the commit failed (on purpose, once)", isRetriable: true)
        }
        try await bus.send((0..<commands).map { BusImportRow(row: $0) })
        let lost = (commands + 1) / 2
        try await wait(
            "\(lost) lost acks redelivered", progress: { lostAcks.progress },
            until: { lostAcks.lost == lost && lostAcks.redelivered == lost })
        try await poll("\(commands) effects", progress: { lostAcks.progress }, until: { try await inbox.effects().count == commands })
        try await Task.sleep(for: .milliseconds(300))
        let effects = try await inbox.effects()
        try await bus.shutdown()
        let twice = effects.filter { $0.value > 1 }.keys.sorted()
        try check(twice.isEmpty, "rows \(twice) took effect more than once")
        try check(Set(effects.keys) == Set(0..<commands), "rows \(Set(0..<commands).subtracting(effects.keys).sorted()) never took effect")
        return
            "\(commands) commands, \(lost) acks lost after their commit and redelivered, \(failedCommits.value.count) commits failed once: each effect counted once"
    }
}

/// Throws after every second command's first successful handling — after its inbox commit,
/// before the ack — and counts the redeliveries of those commands.
private final class LoseAckAfterCommit: BusMiddleware, Sendable {
    private struct State {
        var handledOnce = 0
        var lost: Set<String> = []
        var redelivered: Set<String> = []
    }

    private let state = Mutex(State())

    var lost: Int { state.withLock { $0.lost.count } }
    var redelivered: Int { state.withLock { $0.redelivered.count } }
    var progress: Int { state.withLock { $0.handledOnce + $0.redelivered.count } }

    func handle(_ message: InboundMessage, next: (InboundMessage) async throws -> Void) async throws {
        let id = message.envelope.id
        try await next(message)
        let loseIt = state.withLock { state -> Bool in
            if state.lost.contains(id) {
                state.redelivered.insert(id)
                return false
            }
            if state.redelivered.contains(id) { return false }
            state.handledOnce += 1
            guard state.handledOnce % 2 == 1 else { return false }
            state.lost.insert(id)
            return true
        }
        if loseIt { throw CourierError(.transportClosed, "the ack was lost after the commit (on purpose)", isRetriable: true) }
    }
}
