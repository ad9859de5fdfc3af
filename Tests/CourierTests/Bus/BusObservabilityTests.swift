import Courier
import CourierBus
import Foundation
import InMemoryTracing
import MetricsTestKit
import Synchronization
import Testing
import Tracing

/// A tracer that records spans in memory and propagates them as W3C Trace Context
/// (`traceparent`), as an OpenTelemetry tracer does.
struct W3CRecordingTracer: Tracer {
    typealias Span = InMemorySpan
    let inner = InMemoryTracer(
        idGenerator: .init(
            nextTraceID: { String(format: "%016llx%016llx", UInt64.random(in: 1...UInt64.max), UInt64.random(in: 1...UInt64.max)) },
            nextSpanID: { String(format: "%016llx", UInt64.random(in: 1...UInt64.max)) }
        ))

    func startSpan<Instant: TracerInstant>(
        _ operationName: String, context: @autoclosure () -> ServiceContext, ofKind kind: SpanKind,
        at instant: @autoclosure () -> Instant, function: String, file fileID: String, line: UInt
    ) -> InMemorySpan {
        inner.startSpan(operationName, context: context(), ofKind: kind, at: instant(), function: function, file: fileID, line: line)
    }

    func forceFlush() {}

    func inject<Carrier, Inject: Injector>(_ context: ServiceContext, into carrier: inout Carrier, using injector: Inject)
    where Carrier == Inject.Carrier {
        guard let span = context.inMemorySpanContext else { return }
        injector.inject("00-\(span.traceID)-\(span.spanID)-01", forKey: "traceparent", into: &carrier)
    }

    func extract<Carrier, Extract: Extractor>(_ carrier: Carrier, into context: inout ServiceContext, using extractor: Extract)
    where Carrier == Extract.Carrier {
        guard let parent = extractor.extract(key: "traceparent", from: carrier) else { return }
        let parts = parent.split(separator: "-")
        guard parts.count == 4, parts[0] == "00", parts[1].count == 32, parts[2].count == 16 else { return }
        context.inMemorySpanContext = InMemorySpanContext(traceID: String(parts[1]), spanID: String(parts[2]), parentSpanID: nil)
    }
}

@Suite("MessageBus observability")
struct BusObservabilityTests {
    @Test func oneTraceFollowsAMessageFromPublisherThroughTheTransformerToTheHandler() async throws {
        let tracer = W3CRecordingTracer()
        let bus = MessageBus(transport: try InMemoryTransport(), configuration: .init(tracer: tracer))
        let received = Shared<[MessageContext]>([])
        try await bus.transform(CustomerRegistered.self, group: "marketing-transformer") { event, _ in
            [.send(CreateCustomer(customerID: event.customerID, email: event.email))]
        }
        try await bus.handle(CreateCustomer.self) { _, context in received.update { $0.append(context) } }

        try await tracer.withSpan("register customer", ofKind: .server) { _ in
            try await bus.publish(CustomerRegistered(customerID: "c-1", email: "ada@example.com"))
        }
        try await eventually("the command") { received().count == 1 }
        try await eventually("every span ended") { tracer.inner.finishedSpans.count == 5 }
        let spans = tracer.inner.finishedSpans
        let names = spans.map(\.operationName)
        #expect(
            Set(names) == [
                "register customer", "customer-registered publish", "customer-registered process", "create-customer send",
                "create-customer process",
            ])
        #expect(Set(spans.map(\.traceID)).count == 1, "one trace: \(spans.map { ($0.operationName, $0.traceID) })")
        func span(_ name: String) throws -> FinishedInMemorySpan { try #require(spans.first { $0.operationName == name }) }
        // Each hop's parent is the one before it.
        #expect(try span("customer-registered publish").parentSpanID == span("register customer").spanID)
        #expect(try span("customer-registered process").parentSpanID == span("customer-registered publish").spanID)
        #expect(try span("create-customer send").parentSpanID == span("customer-registered process").spanID)
        #expect(try span("create-customer process").parentSpanID == span("create-customer send").spanID)
        #expect(try span("create-customer send").kind == .producer)
        #expect(try span("create-customer process").kind == .consumer)
        #expect(try span("create-customer process").attributes["messaging.destination.name"]?.toSpanAttribute() == "create-customer")
        // On the wire: W3C trace context in the message headers.
        let traceparent = try #require(received()[0].headers[CourierHeader.traceParent])
        #expect(traceparent == "00-\(try span("create-customer send").traceID)-\(try span("create-customer send").spanID)-01")
        try await bus.shutdown()
    }

    @Test func aFailingHandlerRecordsItsErrorOnTheSpan() async throws {
        let tracer = W3CRecordingTracer()
        let bus = MessageBus(transport: try InMemoryTransport(), configuration: .init(retryPolicy: .none, tracer: tracer))
        try await bus.handle(ChargeCard.self) { _, _ in throw Flaky() }
        try await bus.send(ChargeCard(orderID: 1))
        try await eventually("the process span") {
            tracer.inner.finishedSpans.contains { $0.operationName == "billing.charge-card process" }
        }
        let process = try #require(tracer.inner.finishedSpans.first { $0.operationName == "billing.charge-card process" })
        #expect(process.status?.code == .error)
        #expect(process.errors.count == 1)
        try await bus.shutdown()
    }

    @Test func metricsCountPublishedDeliveredAckedRetriedAndDeadLettered() async throws {
        let metrics = TestMetrics()
        let transport = ObservedTransport(try InMemoryTransport())
        let bus = MessageBus(
            transport: transport,
            configuration: .init(retryPolicy: RetryPolicy(immediateRetries: 1, delayedRetries: 1), metricsFactory: metrics)
        )
        let failures = Shared(0)
        try await bus.subscribe(to: OrderPlaced.self, group: "billing") { event, _ in
            // Order 2 fails twice (its first delivery), then works; order 3 always fails.
            if event.orderID == 3 { throw Flaky() }
            if event.orderID == 2
                && failures.update({
                    $0 += 1; return $0
                }) <= 2
            {
                throw Flaky()
            }
        }
        try await bus.publish((1...3).map { OrderPlaced(orderID: $0, customer: "c\($0)") })
        var poison = Envelope(text: "{")
        poison.type = OrderPlaced.messageType
        try await transport.inner.publish(poison, to: OrderPlaced.topic)
        try await eventually("everything settled") {
            transport.events.filter { if case .acked = $0 { true } else if case .deadLettered = $0 { true } else { false } }.count == 4
        }
        let handling = [("destination", "shop.orders"), ("group", "billing"), ("type", "shop.OrderPlaced.v1")]
        let published = try metrics.expectCounter(
            BusMetricName.published, [("destination", "shop.orders"), ("kind", "event"), ("type", "shop.OrderPlaced.v1")])
        #expect(published.totalValue == 3)
        #expect(
            try metrics.expectTimer(
                BusMetricName.publishDuration, [("destination", "shop.orders"), ("kind", "event"), ("type", "shop.OrderPlaced.v1")]
            ).values.count == 1)
        // Deliveries: 1, 2, 3, poison, and the redeliveries of 2 and 3.
        #expect(try metrics.expectCounter(BusMetricName.delivered, handling).totalValue == 6)
        #expect(try metrics.expectCounter(BusMetricName.acked, handling).totalValue == 2)
        #expect(try metrics.expectCounter(BusMetricName.retried, handling + [("retry", "immediate")]).totalValue == 3)
        #expect(try metrics.expectCounter(BusMetricName.retried, handling + [("retry", "delayed")]).totalValue == 2)
        #expect(try metrics.expectCounter(BusMetricName.deadLettered, handling + [("cause", "handler")]).totalValue == 1)
        #expect(try metrics.expectCounter(BusMetricName.deadLettered, handling + [("cause", "poison")]).totalValue == 1)
        #expect(try metrics.expectTimer(BusMetricName.handlerDuration, handling + [("outcome", "success")]).values.count == 2)
        #expect(try metrics.expectTimer(BusMetricName.handlerDuration, handling + [("outcome", "failure")]).values.count == 6)
        try await bus.shutdown()
    }
}
