import Courier
import Foundation
import InMemoryTracing
import Logging
import Metrics
import Synchronization
import Testing
import Tracing

@testable import CourierBus

/// The inbound pipeline's steps, one by one and in order, without any transport: each test
/// drives a step with a made-up delivery and a `next` that stands for the steps after it.
@Suite("Bus pipeline steps")
struct PipelineTests {
    struct NoSettler: DeliverySettler {
        func ack(tag: UInt64) async throws {}
        func nack(tag: UInt64, delay: Duration) async throws {}
        func deadLetter(tag: UInt64, reason: String, headers: [String: String]) async throws {}
    }

    static let metrics = HandlerMetrics(
        destination: "billing.charge-card", group: nil, type: ChargeCard.messageType, factory: NOOPMetricsHandler.instance)

    static func state(payload: String = #"{"orderID":7}"#, type: String? = ChargeCard.messageType, attempt: Int = 1) -> HandlingState {
        var envelope = Envelope(payload: Array(payload.utf8))
        envelope.type = type
        envelope.contentType = "application/json"
        let delivery = Delivery(envelope: envelope, attempt: attempt, origin: .queue(ChargeCard.queue), tag: 1, settler: NoSettler())
        return HandlingState(delivery: delivery, logger: Logger(label: "test"), messageType: "Test.v1")
    }

    /// What the steps after the one under test did.
    final class Calls: Sendable {
        private let count = Mutex(0)
        var value: Int { count.withLock { $0 } }
        func next(_ outcome: Outcome) -> Outcome {
            count.withLock { $0 += 1 }
            return outcome
        }
    }

    static func isDeadLetter(_ outcome: Outcome, counter: Metrics.Counter? = nil, containing text: String) -> Bool {
        guard case .deadLetter(let reason) = outcome else { return false }
        return reason.reason.contains(text) && (counter.map { $0 === reason.counter } ?? true)
    }

    // MARK: Decode

    @Test func decodeGivesTheMessageToTheNextSteps() async {
        var state = Self.state()
        let step = DecodeStep<ChargeCard>(serializer: JSONMessageSerializer(), metrics: Self.metrics, messageType: ChargeCard.messageType)
        let calls = Calls()
        let outcome = await step.run(&state) { state in
            calls.next((state.message as? ChargeCard) == ChargeCard(orderID: 7) ? .handled : .alreadyHandled)
        }
        guard case .handled = outcome else { Issue.record("decoded message not passed on: \(outcome)"); return }
        #expect(calls.value == 1)
    }

    @Test func decodeDeadLettersAnotherTypeAndPoisonWithoutGoingOn() async {
        let step = DecodeStep<ChargeCard>(serializer: JSONMessageSerializer(), metrics: Self.metrics, messageType: ChargeCard.messageType)
        let calls = Calls()
        var other = Self.state(type: "Refund.v1")
        #expect(
            Self.isDeadLetter(
                await step.run(&other) { _ in calls.next(.handled) }, counter: Self.metrics.deadLetteredAsUnknown,
                containing: "unknown message type Refund.v1"))
        var poison = Self.state(payload: "not json")
        #expect(
            Self.isDeadLetter(
                await step.run(&poison) { _ in calls.next(.handled) }, counter: Self.metrics.deadLetteredAsPoison,
                containing: "cannot be decoded"))
        var xml = Self.state()
        xml.envelope.contentType = "application/xml"
        #expect(Self.isDeadLetter(await step.run(&xml) { _ in calls.next(.handled) }, containing: "content type application/xml"))
        #expect(calls.value == 0, "poison never reaches the handler")
    }

    // MARK: De-duplication

    @Test func deduplicationSkipsWhatWasHandledAndRecordsOnlySuccess() async {
        let store = InMemoryDeduplicationStore()
        let step = DeduplicationStep(store: store, scope: "q", metrics: Self.metrics)
        let calls = Calls()
        var failing = Self.state()
        _ = await step.run(&failing) { _ in calls.next(.failed(Flaky(), calls: 1)) }
        let recorded = store.wasHandled(failing.delivery.envelope.id, scope: "q")
        #expect(!recorded, "a failure is not recorded")
        var first = Self.state()
        _ = await step.run(&first) { _ in calls.next(.handled) }
        var again = first
        guard case .alreadyHandled = await step.run(&again, next: { _ in calls.next(.handled) }) else {
            Issue.record("a handled id was handled again")
            return
        }
        #expect(calls.value == 2)
    }

    // MARK: Retries and dead-letter

    @Test func immediateRetriesRunTheNextStepsAgainUntilTheyPass() async {
        let step = ImmediateRetryStep(retries: 3, metrics: Self.metrics)
        let calls = Calls()
        var state = Self.state()
        let outcome = await step.run(&state) { state in calls.next(state.immediateRetry < 2 ? .failed(Flaky(), calls: 1) : .handled) }
        guard case .handled = outcome else { Issue.record("\(outcome)"); return }
        #expect(calls.value == 3)
        #expect(state.immediateRetry == 2)
    }

    @Test func immediateRetriesStopAtTheLimitAndAtANonRetriableError() async {
        let step = ImmediateRetryStep(retries: 2, metrics: Self.metrics)
        let flaky = Calls()
        var state = Self.state()
        guard case .failed(_, let calls) = await step.run(&state, next: { _ in flaky.next(.failed(Flaky(), calls: 1)) }) else {
            Issue.record("a failure passed")
            return
        }
        #expect(calls == 3 && flaky.value == 3)
        let fatal = Calls()
        _ = await step.run(&state) { _ in fatal.next(.failed(Unfixable(), calls: 1)) }
        #expect(fatal.value == 1)
    }

    @Test func delayedRetryTurnsAFailureIntoARedeliveryWhileAttemptsRemain() async {
        let policy = RetryPolicy(
            immediateRetries: 0, delayedRetries: 2, initialDelay: .seconds(1), multiplier: 2, maxDelay: .seconds(60), jitter: 0)
        let step = DelayedRetryStep(policy: policy, random: { 0.5 })
        var second = Self.state(attempt: 2)
        guard case .retryLater(let delay, _) = await step.run(&second, next: { _ in .failed(Flaky(), calls: 1) }) else {
            Issue.record("attempt 2 of 3 was not retried")
            return
        }
        #expect(delay == .seconds(2))
        var last = Self.state(attempt: 3)
        guard case .failed = await step.run(&last, next: { _ in .failed(Flaky(), calls: 1) }) else {
            Issue.record("the last attempt was retried"); return
        }
        var fatal = Self.state(attempt: 1)
        guard case .failed = await step.run(&fatal, next: { _ in .failed(Unfixable(), calls: 1) }) else {
            Issue.record("a non-retriable error was retried"); return
        }
    }

    @Test func deadLetterStepSaysWhyWithTheErrorsTypeAndText() async {
        let step = DeadLetterStep(policy: RetryPolicy(immediateRetries: 1, delayedRetries: 2), metrics: Self.metrics)
        var state = Self.state(attempt: 3)
        let outcome = await step.run(&state) { _ in .failed(Flaky(), calls: 2) }
        guard case .deadLetter(let reason) = outcome else { Issue.record("\(outcome)"); return }
        #expect(reason.reason == "the handler failed 2 times on attempt 3 (of 3): the database did not answer")
        #expect(reason.errorType.hasSuffix("Flaky"))
        #expect(reason.counter === Self.metrics.deadLetteredByHandler)
        guard case .handled = await step.run(&state, next: { _ in .handled }) else { Issue.record("success changed"); return }
    }

    // MARK: User middleware

    struct Stamp: BusMiddleware {
        func handle(_ message: InboundMessage, next: (InboundMessage) async throws -> Void) async throws {
            var message = message
            message.envelope.headers["stamped"] = "\(message.immediateRetry)"
            try await next(message)
        }
    }

    struct Refuse: BusMiddleware {
        func handle(_ message: InboundMessage, next: (InboundMessage) async throws -> Void) async throws { throw Unfixable() }
    }

    struct Swallow: BusMiddleware {
        func handle(_ message: InboundMessage, next: (InboundMessage) async throws -> Void) async throws { try? await next(message) }
    }

    @Test func aMiddlewareChangesWhatTheNextStepsSee() async {
        var state = Self.state()
        state.immediateRetry = 1
        let step = MiddlewareStep(middleware: Stamp(), index: 0, messageType: ChargeCard.messageType)
        let seen = Shared<String?>(nil)
        _ = await step.run(&state) { state in
            let stamped = state.envelope.headers["stamped"]
            seen.update { $0 = stamped }
            return .handled
        }
        #expect(seen() == "1")
    }

    @Test func aMiddlewareThatThrowsFailsTheCallOneThatCatchesHandlesIt() async {
        var state = Self.state()
        let calls = Calls()
        guard
            case .failed(let error, _) = await MiddlewareStep(middleware: Refuse(), index: 0, messageType: ChargeCard.messageType).run(
                &state, next: { _ in calls.next(.handled) }),
            error is Unfixable
        else { Issue.record("the middleware's error was lost"); return }
        #expect(calls.value == 0)
        guard
            case .handled = await MiddlewareStep(middleware: Swallow(), index: 0, messageType: ChargeCard.messageType).run(
                &state, next: { _ in calls.next(.failed(Flaky(), calls: 1)) })
        else {
            Issue.record("a caught failure was not handled")
            return
        }
    }

    // MARK: Order

    @Test func theStepsRunInTheDocumentedOrder() async throws {
        for tracer in [InMemoryTracer() as (any Tracer)?, nil] {
            let bus = MessageBus(
                transport: try InMemoryTransport(),
                configuration: .init(deduplication: InMemoryDeduplicationStore(), tracer: tracer, middleware: [Stamp(), Swallow()]))
            let handling = Handling<ChargeCard>(
                bus: bus, policy: RetryPolicy(), status: RegistrationStatus(messageType: "t"), scope: "q",
                deduplication: InMemoryDeduplicationStore(), metrics: Self.metrics,
                logger: Logger(label: "test"), handler: { _, _ in }
            )
            // Without a tracer (the no-op default) the tracing step is left out: nothing to do.
            let tracing = tracer == nil ? [] : ["tracing"]
            #expect(
                handling.pipeline.names
                    == ["dead-letter", "delayed retry", "decode", "de-duplication"] + tracing + [
                        "immediate retries", "metrics", "middleware 1 (Stamp)", "middleware 2 (Swallow)",
                    ]
            )
            try await bus.shutdown()
        }
    }
}

extension HandlingStep {
    /// Runs the step as the pipeline does, with `next` standing for the steps after it.
    func run(
        _ state: inout HandlingState, next: @escaping @Sendable (inout HandlingState) async -> Outcome
    ) async -> Outcome {
        let pipeline = HandlingPipeline(steps: [self], terminal: next)
        return await pipeline.run(&state)
    }
}
