import Courier
import CourierBus
import Foundation
import Logging
import Synchronization
import Testing

/// The bus on the in-memory transport: contracts, handling, retries, poison, concurrency,
/// conversation headers, de-duplication and the transformer.
@Suite("MessageBus")
struct MessageBusTests {
    /// A bus over an observed in-memory transport; delayed retries do not wait.
    func makeBus(
        _ configure: (inout MessageBus.Configuration) -> Void = { _ in }
    ) throws -> (MessageBus, ObservedTransport) {
        let transport = ObservedTransport(try InMemoryTransport())
        var configuration = MessageBus.Configuration(source: "/tests", shutdownDeadline: .seconds(2))
        configure(&configuration)
        return (MessageBus(transport: transport, configuration: configuration), transport)
    }

    /// Reads `count` dead letters of `origin`, acking them.
    func deadLetters(of origin: DeliveryOrigin, on transport: any Transport, count: Int) async throws -> [Envelope] {
        let queue = try await transport.consume(queue: transport.deadLetterQueue(for: origin))
        var letters: [Envelope] = []
        let watchdog = Task {
            try await Task.sleep(for: .seconds(10))
            await queue.close()
        }
        defer { watchdog.cancel() }
        for try await delivery in queue {
            letters.append(delivery.envelope)
            try await delivery.ack()
            if letters.count == count { break }
        }
        await queue.close()
        return letters
    }

    // MARK: Contracts

    @Test func contractNamesFollowTheConvention() {
        #expect(CustomerRegistered.messageName == "CustomerRegistered")
        #expect(CustomerRegistered.messageVersion == 1)
        #expect(CustomerRegistered.messageType == "CustomerRegistered.v1")
        #expect(CustomerRegistered.topic == "customer-registered")
        #expect(CustomerRegistered.V2.messageName == "CustomerRegistered")
        #expect(CustomerRegistered.V2.messageVersion == 2)
        #expect(CustomerRegistered.V2.messageType == "CustomerRegistered.v2")
        #expect(CustomerRegistered.V2.topic == "customer-registered.v2")
        #expect(CreateCustomer.queue == "create-customer")
        #expect(OrderPlaced.topic == "shop.orders")
        #expect(OrderPlaced.messageType == "shop.OrderPlaced.v1")
        #expect(ChargeCard.queue == "billing.charge-card")
        #expect(MessageNaming.destination(name: "HTTPRequestLogged", version: 1) == "httprequest-logged")
        #expect(MessageNaming.destination(name: "Order2Shipped", version: 3) == "order2-shipped.v3")
        for name in [CustomerRegistered.topic, CustomerRegistered.V2.topic, CreateCustomer.queue] {
            #expect(DestinationName.isValid(name))
        }
    }

    @Test func anEventArrivesTypedWithItsHeaders() async throws {
        let (bus, transport) = try makeBus()
        let received = Shared<[(CustomerRegistered, MessageContext)]>([])
        try await bus.subscribe(to: CustomerRegistered.self, group: "marketing") { event, context in
            received.update { $0.append((event, context)) }
        }
        let event = CustomerRegistered(customerID: "c-1", email: "ada@example.com")
        try await bus.publish(event, headers: ["tenant": "eu"])
        try await eventually("the event") { received().count == 1 }
        let (got, context) = received()[0]
        #expect(got == event)
        #expect(context.envelope.type == "CustomerRegistered.v1")
        #expect(context.envelope.contentType == "application/json")
        #expect(context.headers[CourierHeader.source] == "/tests")
        #expect(context.headers["tenant"] == "eu")
        #expect(context.envelope.key == "c-1", "the contract's messageKey is the ordering key")
        #expect(context.correlationID == context.messageID, "a message outside any handler starts its conversation")
        #expect(context.attempt == 1)
        #expect(context.origin == .topic("customer-registered", group: "marketing"))
        #expect(context.logger[metadataKey: "courier-message-id"] == "\(context.messageID)")
        #expect(context.logger[metadataKey: "courier-message-type"] == "CustomerRegistered.v1")
        #expect(context.logger[metadataKey: "courier-attempt"] == "1")
        try await eventually("the ack") { transport.events.contains(.acked(id: context.messageID)) }
        try await bus.shutdown()
    }

    @Test func twoVersionsOfAContractLiveSideBySide() async throws {
        let (bus, _) = try makeBus()
        let old = Shared<[CustomerRegistered]>([])
        let new = Shared<[CustomerRegistered.V2]>([])
        // An old consumer reads version 1, an upgraded one version 2; the producer publishes both.
        try await bus.subscribe(to: CustomerRegistered.self, group: "legacy-crm") { event, _ in old.update { $0.append(event) } }
        try await bus.subscribe(to: CustomerRegistered.V2.self, group: "crm") { event, _ in new.update { $0.append(event) } }
        try await bus.publish(CustomerRegistered(customerID: "c-1", email: "ada@example.com"))
        try await bus.publish(CustomerRegistered.V2(customerID: "c-1", email: "ada@example.com", name: "Ada"))
        try await eventually("both versions") { old().count == 1 && new().count == 1 }
        #expect(old() == [CustomerRegistered(customerID: "c-1", email: "ada@example.com")])
        #expect(new() == [CustomerRegistered.V2(customerID: "c-1", email: "ada@example.com", name: "Ada")])
        try await bus.shutdown()
    }

    @Test func aCommandHasOneHandlerPerService() async throws {
        let (bus, _) = try makeBus()
        let handled = Shared<[CreateCustomer]>([])
        try await bus.handle(CreateCustomer.self) { command, _ in handled.update { $0.append(command) } }
        await #expect(throws: CourierError.self) {
            try await bus.handle(CreateCustomer.self) { _, _ in }
        }
        do {
            try await bus.handle(CreateCustomer.self) { _, _ in }
        } catch let error as CourierError {
            #expect(error.code == .invalidConfiguration)
            #expect(error.message.contains("CreateCustomer.v1 already has a handler"))
        }
        try await bus.send(CreateCustomer(customerID: "c-1", email: "ada@example.com"))
        try await bus.send([
            CreateCustomer(customerID: "c-2", email: "bob@example.com"), CreateCustomer(customerID: "c-3", email: "eve@example.com"),
        ])
        try await eventually("three commands") { handled().count == 3 }
        try await bus.shutdown()
        await #expect(throws: CourierError.self) { try await bus.handle(ChargeCard.self) { _, _ in } }
    }

    // MARK: Retries and dead letters

    @Test func aFailingHandlerIsRetriedAtOnceThenWithBackoffThenDeadLettered() async throws {
        let policy = RetryPolicy(
            immediateRetries: 2, delayedRetries: 3, initialDelay: .seconds(1), multiplier: 2, maxDelay: .seconds(60), jitter: 0.2)
        let randoms = Shared<[Double]>([0.0, 0.5, 0.999])
        let (bus, transport) = try makeBus {
            $0.retryPolicy = policy
            $0.random = { randoms.update { $0.isEmpty ? 0.5 : $0.removeFirst() } }
        }
        let calls = Shared<[(attempt: Int, immediate: Int)]>([])
        try await bus.handle(ChargeCard.self) { _, context in
            calls.update { $0.append((context.attempt, context.immediateRetry)) }
            throw Flaky()
        }
        try await bus.send(ChargeCard(orderID: 7))
        let letters = try await deadLetters(of: .queue("billing.charge-card"), on: transport.inner, count: 1)
        // 3 calls per delivery (1 + 2 immediate retries), 4 deliveries (1 + 3 delayed retries).
        #expect(calls().map(\.attempt) == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4])
        #expect(calls().map(\.immediate) == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])
        // Backoff 1 s, 2 s, 4 s, each scaled by 1 ± 0.2 by the jitter source (0.0, 0.5, 0.999).
        let delays = transport.events.compactMap { event -> Duration? in
            if case .nacked(_, _, let delay) = event { return delay }
            return nil
        }
        #expect(delays == [.milliseconds(800), .milliseconds(2000), .milliseconds(4798)])
        let letter = try #require(letters.first)
        #expect(letter.headers[CourierHeader.errorType] == "CourierTests.Flaky")
        #expect(letter.headers[CourierHeader.errorMessage] == "the database did not answer")
        #expect(letter.headers[CourierHeader.deadLetterReason]?.contains("the handler failed 3 times on attempt 4 (of 4)") == true)
        #expect(letter.headers[CourierHeader.deadLetterAttempts] == "4")
        #expect(letter.type == "ChargeCard.v1", "the dead letter keeps the original message")
        try await bus.shutdown()
    }

    @Test func retryDelaysGrowExponentiallyWithinTheirJitterAndCap() {
        let policy = RetryPolicy(initialDelay: .milliseconds(100), multiplier: 3, maxDelay: .seconds(2), jitter: 0.5)
        #expect(policy.delay(beforeDelayedRetry: 1, random: 0.5) == .milliseconds(100))
        #expect(policy.delay(beforeDelayedRetry: 2, random: 0.5) == .milliseconds(300))
        #expect(policy.delay(beforeDelayedRetry: 3, random: 0.5) == .milliseconds(900))
        #expect(policy.delay(beforeDelayedRetry: 4, random: 0.5) == .seconds(2), "capped")
        #expect(policy.delay(beforeDelayedRetry: 40, random: 1) == .seconds(2), "the jitter never passes the cap")
        #expect(policy.delay(beforeDelayedRetry: 2, random: 0) == .milliseconds(150))
        for retry in 1...10 {
            for step in 0..<20 {
                let delay = policy.delay(beforeDelayedRetry: retry, random: Double(step) / 20)
                #expect(delay >= .milliseconds(50) && delay <= .seconds(2))
            }
        }
        #expect(throws: CourierError.self) { try RetryPolicy(immediateRetries: -1).validate() }
        #expect(throws: CourierError.self) { try RetryPolicy(multiplier: 0.5).validate() }
        #expect(throws: CourierError.self) { try RetryPolicy(jitter: 2).validate() }
        #expect(throws: CourierError.self) { try RetryPolicy(initialDelay: .seconds(10), maxDelay: .seconds(1)).validate() }
    }

    @Test func aHandlerThatRecoversAcksAndIsNotDeadLettered() async throws {
        let (bus, transport) = try makeBus { $0.retryPolicy = RetryPolicy(immediateRetries: 1, delayedRetries: 2) }
        let calls = Shared(0)
        try await bus.handle(ChargeCard.self) { _, _ in
            // Fails the first delivery twice (the call and its immediate retry), then works.
            if calls.update({
                $0 += 1; return $0
            }) <= 2 {
                throw Flaky()
            }
        }
        try await bus.send(ChargeCard(orderID: 1))
        try await eventually("the ack") { transport.events.contains { if case .acked = $0 { true } else { false } } }
        #expect(calls() == 3)
        #expect(transport.events.filter { if case .nacked = $0 { true } else { false } }.count == 1)
        #expect(!transport.events.contains { if case .deadLettered = $0 { true } else { false } })
        try await bus.shutdown()
    }

    @Test func aNonRetriableErrorIsDeadLetteredAtOnce() async throws {
        let (bus, transport) = try makeBus()
        let calls = Shared(0)
        try await bus.handle(ChargeCard.self) { _, _ in
            calls.update { $0 += 1 }
            throw Unfixable()
        }
        try await bus.send(ChargeCard(orderID: 1))
        let letters = try await deadLetters(of: .queue("billing.charge-card"), on: transport.inner, count: 1)
        #expect(calls() == 1)
        #expect(letters.first?.headers[CourierHeader.errorType] == "CourierTests.Unfixable")
        #expect(letters.first?.headers[CourierHeader.deadLetterReason]?.contains("non-retriable") == true)
        try await bus.shutdown()
    }

    @Test func poisonAndForeignMessagesAreDeadLetteredAtOnceAndTheStreamGoesOn() async throws {
        let (bus, transport) = try makeBus()
        let handled = Shared<[Int]>([])
        try await bus.handle(ChargeCard.self) { command, _ in handled.update { $0.append(command.orderID) } }
        var garbage = Envelope(text: "{ not json")
        garbage.type = ChargeCard.messageType
        var wrongShape = Envelope(text: #"{"order": "seven"}"#)
        wrongShape.type = ChargeCard.messageType
        wrongShape.contentType = "application/json"
        var foreign = Envelope(text: #"{"orderID": 3}"#)
        foreign.type = "RefundCard.v1"
        var xml = Envelope(text: "<orderID>4</orderID>")
        xml.contentType = "application/xml"
        try await transport.inner.send([garbage, wrongShape, foreign, xml], to: ChargeCard.queue)
        try await bus.send(ChargeCard(orderID: 5))
        let letters = try await deadLetters(of: .queue(ChargeCard.queue), on: transport.inner, count: 4)
        try await eventually("the good command") { handled() == [5] }
        let byID = Dictionary(uniqueKeysWithValues: letters.map { ($0.id, $0) })
        #expect(byID[garbage.id]?.headers[CourierHeader.deadLetterReason]?.contains("cannot be decoded as ChargeCard.v1") == true)
        #expect(byID[garbage.id]?.headers[CourierHeader.errorType]?.contains("DecodingError") == true)
        #expect(byID[wrongShape.id]?.headers[CourierHeader.errorMessage]?.contains("orderID") == true)
        #expect(byID[foreign.id]?.headers[CourierHeader.deadLetterReason]?.contains("unknown message type RefundCard.v1") == true)
        #expect(byID[xml.id]?.headers[CourierHeader.deadLetterReason]?.contains("content type application/xml") == true)
        // None of them was retried.
        #expect(!transport.events.contains { if case .nacked = $0 { true } else { false } })
        try await bus.shutdown()
    }

    /// A dead letter waiting for its broker confirm does not hold the handler's slot: with
    /// concurrency 1, the messages behind it are handled meanwhile; a later message of the
    /// poison message's own key waits for it, so order per key holds.
    @Test func deadLetteringDoesNotHoldUpTheStreamButKeepsKeyOrder() async throws {
        let (bus, transport) = try makeBus()
        let handled = Shared<[String]>([])
        try await bus.handle(CreateCustomer.self) { command, _ in handled.update { $0.append(command.customerID) } }
        transport.holdDeadLetters()
        var poison = Envelope(text: "{ not json")
        poison.key = "k-poison"
        poison.contentType = "application/json"
        try await transport.inner.send([poison], to: CreateCustomer.queue)
        try await eventually("the dead letter is waiting for its confirm") { transport.heldDeadLetters == 1 }
        try await bus.send((1...5).map { CreateCustomer(customerID: "other-\($0)", email: "x") })
        try await bus.send(CreateCustomer(customerID: "k-poison", email: "same key"))
        try await eventually("the other keys are handled meanwhile") { handled().count == 5 }
        #expect(handled() == (1...5).map { "other-\($0)" })
        try await Task.sleep(for: .milliseconds(100))
        #expect(!handled().contains("k-poison"), "the poison message's key waits for its dead letter")
        #expect(!transport.events.contains { if case .deadLettered = $0 { true } else { false } })
        transport.releaseDeadLetters()
        try await eventually("the key's next message after the dead letter") { handled().last == "k-poison" }
        #expect(transport.events.contains { if case .deadLettered(let id, _) = $0 { id == poison.id } else { false } })
        try await bus.shutdown()
    }

    /// A registration whose subscription fails takes no more messages, on any of its
    /// workers: each worker takes its own deliveries, and the others stop after the one they
    /// were already waiting for.
    @Test func aFailedSubscriptionEndsEveryWorkerOfTheRegistration() async throws {
        let (bus, transport) = try makeBus()
        let handled = Shared(0)
        let concurrency = 4
        let registration = try await bus.handle(CreateCustomer.self, options: HandlerOptions(concurrency: concurrency)) { _, _ in
            handled.update { $0 += 1 }
        }
        try await bus.send((1...3).map { CreateCustomer(customerID: "before-\($0)", email: "x") })
        try await eventually("the first commands") { handled() == 3 }
        #expect(registration.failure == nil)
        transport.failPulls(1)
        try await bus.send(CreateCustomer(customerID: "fails", email: "x"))
        try await eventually("the registration's failure") { registration.failure != nil }
        try await bus.send((1...10).map { CreateCustomer(customerID: "after-\($0)", email: "x") })
        try await Task.sleep(for: .milliseconds(300))
        // The other workers were each waiting for a delivery when the failure came: at most
        // one more each, then none.
        #expect(handled() <= 3 + concurrency - 1, "\(handled()) handled after the subscription failed")
        try await bus.shutdown()
    }

    @Test func aDelayedRetryDoesNotHoldBackOtherMessages() async throws {
        // Real delays here: the failing message waits 500 ms while the others go through.
        let transport = ObservedTransport(try InMemoryTransport(), timeTravel: false)
        let policy = RetryPolicy(immediateRetries: 0, delayedRetries: 1, initialDelay: .milliseconds(500), jitter: 0)
        let bus = MessageBus(transport: transport, configuration: .init(retryPolicy: policy))
        let order = Shared<[Int]>([])
        try await bus.subscribe(to: OrderPlaced.self, group: "billing") { event, context in
            if event.orderID == 1 && context.attempt == 1 { throw Flaky() }
            order.update { $0.append(event.orderID) }
        }
        // Different customers (keys): nothing orders them against each other.
        try await bus.publish((1...5).map { OrderPlaced(orderID: $0, customer: "customer-\($0)") })
        try await eventually("the other orders") { order().count == 4 }
        #expect(!order().contains(1), "the failed message waits for its retry")
        try await eventually("the retried order") { order().count == 5 }
        #expect(order().last == 1)
        try await bus.shutdown()
    }

    // MARK: Concurrency and ordering

    @Test func handlersRunConcurrentlyUpToTheLimitAndOneAtATimePerKey() async throws {
        let (bus, _) = try makeBus()
        struct Tally: Sendable {
            var running = 0
            var peak = 0
            var runningKeys: Set<String> = []
            var overlaps = 0
            var seen: [String: [Int]] = [:]
        }
        let tally = Shared(Tally())
        let keys = 12
        let perKey = 40
        try await bus.subscribe(to: OrderPlaced.self, group: "warehouse", options: HandlerOptions(concurrency: 4)) { event, _ in
            tally.update { tally in
                tally.running += 1
                tally.peak = max(tally.peak, tally.running)
                if !tally.runningKeys.insert(event.customer).inserted { tally.overlaps += 1 }
                tally.seen[event.customer, default: []].append(event.orderID)
            }
            try await Task.sleep(for: .microseconds(Int.random(in: 0...500)))
            tally.update { tally in
                tally.running -= 1
                tally.runningKeys.remove(event.customer)
            }
        }
        var events: [OrderPlaced] = []
        for index in 0..<(keys * perKey) { events.append(OrderPlaced(orderID: index, customer: "customer-\(index % keys)")) }
        try await bus.publish(events)
        try await eventually("every order", timeout: .seconds(30)) { tally().seen.values.reduce(0) { $0 + $1.count } == keys * perKey }
        let result = tally()
        #expect(result.peak == 4, "four handlers at once, never more")
        #expect(result.overlaps == 0, "never two handlers for one key at once")
        for (key, orders) in result.seen {
            #expect(orders == orders.sorted(), "per-key order for \(key)")
            #expect(orders.count == perKey)
        }
        try await bus.shutdown()
    }

    // MARK: Conversations

    @Test func followUpMessagesCarryCorrelationAndCausation() async throws {
        let (bus, _) = try makeBus()
        let seen = Shared<[String: MessageContext]>([:])
        // web store → CustomerRegistered → (handler sends) CreateCustomer → (handler publishes through the bus) CustomerCreated
        try await bus.subscribe(to: CustomerRegistered.self, group: "onboarding") { event, context in
            seen.update { $0["registered"] = context }
            try await context.send(CreateCustomer(customerID: event.customerID, email: event.email))
        }
        try await bus.handle(CreateCustomer.self) { command, context in
            seen.update { $0["create"] = context }
            // Through the bus, not the context: the conversation still continues.
            try await bus.publish(CustomerCreated(customerID: command.customerID))
        }
        try await bus.subscribe(to: CustomerCreated.self, group: "audit") { _, context in
            seen.update { $0["created"] = context }
        }
        try await bus.publish(CustomerRegistered(customerID: "c-9", email: "grace@example.com"))
        try await eventually("the whole conversation") { seen().count == 3 }
        let registered = try #require(seen()["registered"])
        let create = try #require(seen()["create"])
        let created = try #require(seen()["created"])
        #expect(create.correlationID == registered.messageID)
        #expect(create.envelope.causationID == registered.messageID)
        #expect(created.correlationID == registered.messageID)
        #expect(created.envelope.causationID == create.messageID)
        #expect(create.logger[metadataKey: "courier-correlation-id"] == "\(registered.messageID)")
        try await bus.shutdown()
    }

    // MARK: De-duplication

    @Test func redeliveredIdsAreHandledOncePerGroup() async throws {
        let store = InMemoryDeduplicationStore(capacity: 100)
        let (bus, transport) = try makeBus { $0.deduplication = store }
        let billing = Shared<[String]>([])
        let audit = Shared<[String]>([])
        try await bus.subscribe(to: OrderPlaced.self, group: "billing") { _, context in billing.update { $0.append(context.messageID) } }
        try await bus.subscribe(to: OrderPlaced.self, group: "audit") { _, context in audit.update { $0.append(context.messageID) } }
        var order = Envelope(payload: try JSONMessageSerializer().encode(OrderPlaced(orderID: 1, customer: "c")))
        order.type = OrderPlaced.messageType
        // The same message id three times: a producer retry and two redeliveries, say.
        try await transport.inner.publish([order, order, order], to: OrderPlaced.topic)
        try await bus.publish(OrderPlaced(orderID: 2, customer: "c"))
        try await eventually("both groups") { billing().count == 2 && audit().count == 2 }
        try await Task.sleep(for: .milliseconds(100))
        #expect(billing().filter { $0 == order.id }.count == 1)
        #expect(audit().filter { $0 == order.id }.count == 1, "each group handles it once")
        #expect(store.wasHandled(order.id, scope: "shop.orders/billing"))
        #expect(transport.events.filter { $0 == .acked(id: order.id) }.count == 6, "duplicates are acked, not left behind")
        try await bus.shutdown()
    }

    @Test func theInMemoryStoreForgetsItsOldestIdsFirst() {
        let store = InMemoryDeduplicationStore(capacity: 3)
        for id in ["a", "b", "c", "d"] { store.markHandled(id, scope: "s") }
        store.markHandled("d", scope: "s")
        #expect(!store.wasHandled("a", scope: "s"))
        #expect(store.wasHandled("b", scope: "s") && store.wasHandled("d", scope: "s"))
        #expect(!store.wasHandled("b", scope: "other"))
        #expect(store.count(scope: "s") == 3)
    }

    // MARK: Transformer

    @Test func theTransformerAcksTheEventOnlyAfterItsCommandsAreConfirmed() async throws {
        let (bus, transport) = try makeBus()
        try await bus.transform(CustomerRegistered.self, group: "marketing-transformer") { event, _ in
            [
                .send(CreateCustomer(customerID: event.customerID, email: event.email)),
                .publish(CustomerCreated(customerID: event.customerID)),
            ]
        }
        transport.holdSends()
        let event = CustomerRegistered(customerID: "c-1", email: "ada@example.com")
        try await bus.publish(event)
        try await eventually("the held send") { transport.heldSends == 1 }
        try await Task.sleep(for: .milliseconds(100))
        #expect(!transport.events.contains { if case .acked = $0 { true } else { false } }, "no ack while the command is unconfirmed")
        transport.releaseSends()
        try await eventually("the ack") { transport.events.contains { if case .acked = $0 { true } else { false } } }
        let events = transport.events
        let confirmedCommand = try #require(events.firstIndex { if case .confirmed(_, "create-customer") = $0 { true } else { false } })
        let confirmedEvent = try #require(events.firstIndex { if case .confirmed(_, "customer-created") = $0 { true } else { false } })
        let acked = try #require(events.firstIndex { if case .acked = $0 { true } else { false } })
        #expect(confirmedCommand < acked && confirmedEvent < acked)
        try await bus.shutdown()
    }

    @Test func aTransformerWhoseSendFailsRetriesTheEventAndLosesNothing() async throws {
        let (bus, transport) = try makeBus { $0.retryPolicy = RetryPolicy(immediateRetries: 1, delayedRetries: 2) }
        let commands = Shared<[CreateCustomer]>([])
        try await bus.transform(CustomerRegistered.self, group: "marketing-transformer") { event, _ in
            [.send(CreateCustomer(customerID: event.customerID, email: event.email))]
        }
        try await bus.handle(CreateCustomer.self) { command, _ in commands.update { $0.append(command) } }
        transport.failSends(3)  // the first delivery's two calls, and the first call of the retry
        try await bus.publish(CustomerRegistered(customerID: "c-1", email: "ada@example.com"))
        try await eventually("the command") { commands().count == 1 }
        #expect(commands() == [CreateCustomer(customerID: "c-1", email: "ada@example.com")])
        #expect(transport.events.filter { if case .nacked = $0 { true } else { false } }.count == 1)
        try await bus.shutdown()
    }

    // MARK: Validation

    @Test func badOptionsAreRefusedAtRegistration() async throws {
        let (bus, _) = try makeBus()
        await #expect(throws: CourierError.self) {
            try await bus.subscribe(to: OrderPlaced.self, group: "g", options: HandlerOptions(concurrency: 0)) { _, _ in }
        }
        await #expect(throws: CourierError.self) {
            try await bus.subscribe(to: OrderPlaced.self, group: "bad group!") { _, _ in }
        }
        await #expect(throws: CourierError.self) {
            try await bus.subscribe(to: OrderPlaced.self, group: "g", options: HandlerOptions(retryPolicy: RetryPolicy(delayedRetries: -1)))
            { _, _ in }
        }
        try await bus.shutdown()
    }

    @Test func anUnencodableMessageFailsWithATypedError() async throws {
        let (bus, _) = try makeBus()
        struct Measured: IntegrationEvent { var value: Double }
        await #expect(throws: CourierError.self) { try await bus.publish(Measured(value: .nan)) }
        do {
            try await bus.publish(Measured(value: .infinity))
        } catch let error as CourierError {
            #expect(error.code == .encodingFailed)
        }
        try await bus.shutdown()
    }
}
