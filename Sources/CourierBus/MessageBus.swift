import Courier
import Foundation
import Logging
import Metrics
import ServiceLifecycle
import Synchronization
import Tracing

/// Typed integration events and commands over any ``Transport``.
///
/// ```swift
/// let bus = MessageBus(transport: try InMemoryTransport())
/// try await bus.handle(CreateCustomer.self) { command, context in
///     context.logger.info("creating \(command.email)")
/// }
/// try await bus.send(CreateCustomer(email: "ada@example.com"))
/// ```
///
/// - ``publish(_:key:headers:)`` takes only ``IntegrationEvent``s, ``send(_:key:headers:)``
///   only ``IntegrationCommand``s: the other way round does not compile.
/// - A handler that returns acks its message. One that throws is retried by the
///   ``RetryPolicy`` and then dead-lettered with the error in headers
///   (``CourierHeader/errorType``, ``CourierHeader/errorMessage``). A payload that cannot be
///   decoded, or of another contract, is dead-lettered at once.
/// - Each registration runs up to ``HandlerOptions/concurrency`` handlers at once; messages
///   with the same key run one at a time, in order.
/// - The bus is a swift-service-lifecycle `Service`: on graceful shutdown it stops taking
///   messages, lets running handlers finish within ``Configuration/shutdownDeadline``, returns
///   the rest to the broker unacked, and shuts the transport down. ``shutdown()`` does the
///   same without a service group.
public final class MessageBus: Sendable {
    /// How the bus serializes, retries, de-duplicates, logs, measures and traces.
    public struct Configuration: Sendable {
        /// The CloudEvents `source` written on every message (``CourierHeader/source``), such as
        /// `/web-store`. Default: none.
        public var source: String?
        /// The payload format. Default ``JSONMessageSerializer``.
        public var serializer: any MessageSerializer
        /// Retries for handlers that throw, unless a registration sets its own.
        public var retryPolicy: RetryPolicy
        /// How long graceful shutdown waits for running handlers before returning their
        /// messages unacked. Default 10 s.
        public var shutdownDeadline: Duration
        /// Where handled message ids are remembered, to skip redelivered duplicates. Default:
        /// none (handlers must be idempotent, as at-least-once delivery requires).
        public var deduplication: (any DeduplicationStore)?
        /// The bus's logger. Default label `courier.bus`.
        public var logger: Logger
        /// Where metrics go; `nil` uses the process's `MetricsSystem.factory`. See
        /// ``BusMetricName``.
        public var metricsFactory: (any MetricsFactory)?
        /// Spans and trace propagation; `nil` uses the process's `InstrumentationSystem.tracer`.
        public var tracer: (any Tracer)?
        /// The source of jitter for retry delays, a value in `0..<1`. Replace it in tests.
        public var random: @Sendable () -> Double
        /// Your own steps around every handler call and before every publish and send, in
        /// order (the first is outermost on the way in and runs first on the way out). See
        /// ``BusMiddleware`` for where they sit among the bus's own steps. Default: none.
        public var middleware: [any BusMiddleware]
        /// After how many failed deliveries in a row (each one retried later or dead-lettered
        /// counts once) ``MessageBus/health()`` reports a registration as failing. Default 5.
        public var failingAfter: Int = 5

        /// Creates a configuration; every parameter has the documented default.
        public init(
            source: String? = nil,
            serializer: any MessageSerializer = JSONMessageSerializer(),
            retryPolicy: RetryPolicy = RetryPolicy(),
            shutdownDeadline: Duration = .seconds(10),
            deduplication: (any DeduplicationStore)? = nil,
            logger: Logger = Logger(label: "courier.bus"),
            metricsFactory: (any MetricsFactory)? = nil,
            tracer: (any Tracer)? = nil,
            random: @escaping @Sendable () -> Double = { Double.random(in: 0..<1) },
            middleware: [any BusMiddleware] = []
        ) {
            self.source = source
            self.serializer = serializer
            self.retryPolicy = retryPolicy
            self.shutdownDeadline = shutdownDeadline
            self.deduplication = deduplication
            self.logger = logger
            self.metricsFactory = metricsFactory
            self.tracer = tracer
            self.random = random
            self.middleware = middleware
        }
    }

    /// The transport the bus publishes to and consumes from.
    public let transport: any Transport
    /// The configuration the bus was created with.
    public let configuration: Configuration

    private var logger: Logger { configuration.logger }
    private let metricsFactory: any MetricsFactory
    let tracer: any Tracer
    /// Whether `tracer` records anything (it is not the no-op default).
    let tracing: Bool

    private struct State {
        var registrations: [ObjectIdentifier: HandlerRegistration] = [:]
        var commandHandlers: Set<String> = []
        var publishMetrics: [String: PublishMetrics] = [:]
        var shutdown: Task<Void, any Error>?
        var closed = false
        var closeWaiters = Waiters<Void, Void>()
    }
    private let state = Mutex(State())

    /// Creates a bus over `transport`. The bus owns the transport: ``shutdown()`` shuts it down.
    public init(transport: any Transport, configuration: Configuration = Configuration()) {
        self.transport = transport
        self.configuration = configuration
        self.metricsFactory = configuration.metricsFactory ?? MetricsSystem.factory
        self.tracer = configuration.tracer ?? InstrumentationSystem.tracer
        self.tracing = !(tracer is NoOpTracer)
    }

    // MARK: Publishing

    /// Publishes `event` to its topic (``IntegrationEvent/topic``), returning once the
    /// transport confirmed it. Inside a handler it continues the handled message's
    /// conversation (see ``MessageContext``).
    /// - Parameters:
    ///   - key: The ordering key; defaults to the event's ``IntegrationMessage/messageKey``.
    ///   - headers: Extra headers.
    public func publish<E: IntegrationEvent>(_ event: E, key: String? = nil, headers: [String: String] = [:]) async throws {
        try await deliver([.publish(event, key: key, headers: headers)], causedBy: MessageContext.current)
    }

    /// Publishes `events`, in order, to their topic, returning once all are confirmed.
    public func publish<E: IntegrationEvent>(_ events: [E], headers: [String: String] = [:]) async throws {
        try await deliver(events.map { .publish($0, headers: headers) }, causedBy: MessageContext.current)
    }

    /// Sends `command` to its queue (``IntegrationCommand/queue``), returning once the
    /// transport confirmed it. Inside a handler it continues the handled message's
    /// conversation (see ``MessageContext``).
    /// - Parameters:
    ///   - key: The ordering key; defaults to the command's ``IntegrationMessage/messageKey``.
    ///   - headers: Extra headers.
    public func send<C: IntegrationCommand>(_ command: C, key: String? = nil, headers: [String: String] = [:]) async throws {
        try await deliver([.send(command, key: key, headers: headers)], causedBy: MessageContext.current)
    }

    /// Sends `commands`, in order, to their queue, returning once all are confirmed.
    public func send<C: IntegrationCommand>(_ commands: [C], headers: [String: String] = [:]) async throws {
        try await deliver(commands.map { .send($0, headers: headers) }, causedBy: MessageContext.current)
    }

    /// Publishes and sends `messages` in order, consecutive messages to one destination in one
    /// transport call, returning once all are confirmed.
    func deliver(_ messages: [OutgoingMessage], causedBy cause: MessageContext?) async throws {
        try await deliver(staged: messages.map { try stage($0, causedBy: cause) })
    }

    /// Encodes `messages` as the bus publishes them — serializer, type, content type, source,
    /// and the correlation and causation ids of `cause` (by default the message the current
    /// task handles) — without sending them: what an outbox stores inside a database
    /// transaction, to be sent by ``deliver(staged:)`` after the commit.
    public func stage(_ messages: [OutgoingMessage], causedBy cause: MessageContext? = MessageContext.current) throws -> [StagedMessage] {
        try messages.map { try stage($0, causedBy: cause) }
    }

    private func stage(_ message: OutgoingMessage, causedBy cause: MessageContext?) throws -> StagedMessage {
        StagedMessage(kind: message.kind, destination: message.destination, envelope: try envelope(for: message, causedBy: cause))
    }

    /// Publishes and sends staged messages in order — consecutive ones of one type to one
    /// destination in one transport call — through every middleware's
    /// ``BusMiddleware/prepare(_:)`` and the bus's tracing and metrics, returning once the
    /// transport confirmed all of them.
    public func deliver(staged messages: [StagedMessage]) async throws {
        var start = messages.startIndex
        while start < messages.endIndex {
            let first = messages[start]
            let type = first.envelope.type ?? ""
            var end = start + 1
            while end < messages.endIndex, messages[end].kind == first.kind, messages[end].destination == first.destination,
                messages[end].envelope.type ?? "" == type
            {
                end += 1
            }
            var envelopes = messages[start..<end].map(\.envelope)
            if !configuration.middleware.isEmpty {
                envelopes = try await prepared(envelopes, kind: first.kind, destination: first.destination, type: type)
            }
            try await post(envelopes, kind: first.kind, destination: first.destination, type: type)
            start = end
        }
    }

    /// `envelopes` after every middleware's ``BusMiddleware/prepare(_:)``, in order.
    private func prepared(_ envelopes: [Envelope], kind: MessageKind, destination: String, type: String) async throws -> [Envelope] {
        var result: [Envelope] = []
        result.reserveCapacity(envelopes.count)
        for envelope in envelopes {
            var message = OutboundMessage(
                envelope: envelope, kind: kind, destination: destination, messageType: type
            )
            for middleware in configuration.middleware { try await middleware.prepare(&message) }
            result.append(message.envelope)
        }
        return result
    }

    private func envelope(for message: OutgoingMessage, causedBy cause: MessageContext?) throws -> Envelope {
        let payload: [UInt8]
        do {
            payload = try message.encode(configuration.serializer)
        } catch {
            throw CourierError(
                .encodingFailed, "\(message.type) could not be encoded as \(configuration.serializer.contentType): \(error)",
                underlying: error
            )
        }
        // The headers in one dictionary of the right size: growing it header by header cost
        // two reallocations per message.
        var headers = message.headers
        headers.reserveCapacity(message.headers.count + 5)
        headers[CourierHeader.type] = message.type
        headers[CourierHeader.contentType] = configuration.serializer.contentType
        if let source = configuration.source { headers[CourierHeader.source] = source }
        let id = MessageID.random()
        if let cause {
            headers[CourierHeader.correlationID] = cause.correlationID
            headers[CourierHeader.causationID] = cause.messageID
        } else if headers[CourierHeader.correlationID] == nil {
            headers[CourierHeader.correlationID] = id
        }
        return Envelope(id: id, payload: payload, headers: headers, key: message.key)
    }

    private func post(_ envelopes: [Envelope], kind: MessageKind, destination: String, type: String) async throws {
        let metrics = publishMetrics(destination: destination, kind: kind, type: type)
        var envelopes = envelopes
        // Without a tracer (the no-op default) no span is started and nothing injected.
        let span = tracing ? producerSpan(for: &envelopes, kind: kind, destination: destination) : nil
        let start = ContinuousClock.now
        do {
            switch kind {
            case .event: try await transport.publish(envelopes, to: destination)
            case .command: try await transport.send(envelopes, to: destination)
            }
        } catch {
            span?.recordError(error)
            span?.setStatus(SpanStatus(code: .error))
            span?.end()
            throw error
        }
        metrics.duration.recordNanoseconds((ContinuousClock.now - start).nanoseconds)
        metrics.published.increment(by: envelopes.count)
        span?.end()
    }

    /// A producer span for publishing `envelopes`, its context injected into their headers.
    private func producerSpan(for envelopes: inout [Envelope], kind: MessageKind, destination: String) -> any Span {
        let span = tracer.startSpan(
            "\(destination) \(kind == .event ? "publish" : "send")", context: ServiceContext.current ?? .topLevel, ofKind: .producer
        )
        span.attributes["messaging.system"] = transport.capabilities.system
        span.attributes["messaging.destination.name"] = destination
        span.attributes["messaging.operation.type"] = "send"
        span.attributes["messaging.batch.message_count"] = envelopes.count
        if envelopes.count == 1 { span.attributes["messaging.message.id"] = envelopes[0].id }
        for index in envelopes.indices {
            tracer.inject(span.context, into: &envelopes[index].headers, using: HeadersInjector())
        }
        return span
    }

    private func publishMetrics(destination: String, kind: MessageKind, type: String) -> PublishMetrics {
        let name = "\(kind.rawValue)|\(destination)|\(type)"
        if let known = state.withLock({ $0.publishMetrics[name] }) { return known }
        let made = PublishMetrics(destination: destination, kind: kind.rawValue, type: type, factory: metricsFactory)
        return state.withLock { state in
            if let known = state.publishMetrics[name] { return known }
            state.publishMetrics[name] = made
            return made
        }
    }

    // MARK: Handling

    /// Subscribes `handler` to events of type `E` as `group` (every group gets each event;
    /// the members of one group, in this process or others, share them).
    ///
    /// The group is created (durably) before this returns, so events published afterwards
    /// reach it even before the first delivery. The handler's return acks the event; a throw
    /// goes through the retry policy. Returns the registration, which ``HandlerRegistration/stop()``
    /// ends; ``shutdown()`` ends every registration.
    @discardableResult
    public func subscribe<E: IntegrationEvent>(
        to type: E.Type, group: String, options: HandlerOptions = HandlerOptions(),
        handler: @escaping @Sendable (E, MessageContext) async throws -> Void
    ) async throws -> HandlerRegistration {
        let policy = try validated(options)
        try checkOpen("subscribe \(E.messageType) as group \(group)")
        let subscription = try await transport.subscribe(to: E.topic, group: group, options: subscriptionOptions(options, policy))
        return start(E.self, subscription: subscription, group: group, options: options, policy: policy, handler: handler)
    }

    /// Handles commands of type `C` from their queue. A service has one handler per command
    /// type: a second registration on this bus throws ``CourierError/Code/invalidConfiguration``.
    /// Several processes running the same service compete for the queue's commands.
    @discardableResult
    public func handle<C: IntegrationCommand>(
        _ type: C.Type, options: HandlerOptions = HandlerOptions(),
        handler: @escaping @Sendable (C, MessageContext) async throws -> Void
    ) async throws -> HandlerRegistration {
        let policy = try validated(options)
        try checkOpen("handle \(C.messageType)")
        let claimed = state.withLock { $0.commandHandlers.insert(C.messageType).inserted }
        guard claimed else {
            throw CourierError(
                .invalidConfiguration,
                "\(C.messageType) already has a handler on this bus; a command has exactly one handler per service: handle every case in that one handler"
            )
        }
        let subscription: Subscription
        do {
            subscription = try await transport.consume(queue: C.queue, options: subscriptionOptions(options, policy))
        } catch {
            state.withLock { _ = $0.commandHandlers.remove(C.messageType) }
            throw error
        }
        return start(C.self, subscription: subscription, group: nil, options: options, policy: policy, handler: handler)
    }

    /// A transformer (a message translator between two services): subscribes to events of
    /// type `E` as `group`, maps each to zero or more commands or events with `transform`,
    /// publishes and sends them, and acks the event only once the transport confirmed every
    /// one of them. If a send fails, the event is retried like any failed handler, so a
    /// command may be sent twice but never lost.
    @discardableResult
    public func transform<E: IntegrationEvent>(
        _ type: E.Type, group: String, options: HandlerOptions = HandlerOptions(),
        _ transform: @escaping @Sendable (E, MessageContext) async throws -> [OutgoingMessage]
    ) async throws -> HandlerRegistration {
        try await subscribe(to: E.self, group: group, options: options) { event, context in
            let outgoing = try await transform(event, context)
            try await context.deliver(outgoing)
        }
    }

    private func validated(_ options: HandlerOptions) throws(CourierError) -> RetryPolicy {
        try options.validate()
        let policy = options.retryPolicy ?? configuration.retryPolicy
        try policy.validate()
        return policy
    }

    private func subscriptionOptions(_ options: HandlerOptions, _ policy: RetryPolicy) -> SubscriptionOptions {
        // The bus decides about dead-lettering itself (with the error in headers): the
        // transport's own limit lies one attempt beyond the last delayed retry.
        SubscriptionOptions(
            prefetch: options.effectivePrefetch,
            startPosition: options.startPosition,
            maxDeliveryAttempts: policy.delayedRetries + 2
        )
    }

    private func checkOpen(_ what: String) throws(CourierError) {
        let open = state.withLock { $0.shutdown == nil }
        guard open else { throw CourierError(.transportClosed, "cannot \(what): the message bus was shut down") }
    }

    private func start<M: IntegrationMessage>(
        _ type: M.Type, subscription: Subscription, group: String?, options: HandlerOptions, policy: RetryPolicy,
        handler: @escaping @Sendable (M, MessageContext) async throws -> Void
    ) -> HandlerRegistration {
        var logger = self.logger
        logger[metadataKey: "courier-origin"] = "\(subscription.origin)"
        let status = RegistrationStatus(messageType: M.messageType)
        let handling = Handling<M>(
            bus: self,
            policy: policy,
            status: status,
            scope: subscription.origin.group.map { "\(subscription.origin.destination)/\($0)" } ?? subscription.origin.destination,
            deduplication: options.deduplicate ? configuration.deduplication : nil,
            metrics: HandlerMetrics(
                destination: subscription.origin.destination, group: group, type: M.messageType, factory: metricsFactory),
            logger: logger,
            handler: handler
        )
        let dispatcher = HandlerDispatcher(subscription: subscription, concurrency: options.concurrency, logger: logger) { delivery in
            await handling.process(delivery)
        }
        let registration = HandlerRegistration(
            origin: subscription.origin, dispatcher: dispatcher, status: status, deadline: configuration.shutdownDeadline
        ) { [weak self] registration in
            self?.state.withLock { state in
                state.registrations[ObjectIdentifier(registration)] = nil
                if group == nil { state.commandHandlers.remove(M.messageType) }
            }
        }
        state.withLock { $0.registrations[ObjectIdentifier(registration)] = registration }
        dispatcher.start()
        logger.debug("handler started", metadata: ["courier-message-type": "\(M.messageType)"])
        return registration
    }

    /// The running registrations, for ``health()``.
    func registrationsForHealth() -> [HandlerRegistration] {
        state.withLock { Array($0.registrations.values) }
    }

    // MARK: Shutting down

    /// Stops every handler registration (no new messages; running handlers get
    /// ``Configuration/shutdownDeadline`` to finish, then their messages go back unacked),
    /// then shuts the transport down. Idempotent: later calls wait for the first.
    public func shutdown() async throws {
        try await shutdown(deadline: configuration.shutdownDeadline)
    }

    /// ``shutdown()`` with its own deadline for running handlers.
    public func shutdown(deadline: Duration) async throws {
        let task = state.withLock { state -> Task<Void, any Error> in
            if let running = state.shutdown { return running }
            let registrations = Array(state.registrations.values)
            let task = Task { [self] in
                await withTaskGroup(of: Void.self) { group in
                    for registration in registrations {
                        group.addTask { await registration.stop(deadline: deadline) }
                    }
                }
                defer { markClosed() }
                try await transport.shutdown()
                logger.debug("message bus shut down")
            }
            state.shutdown = task
            return task
        }
        try await task.value
    }

    private func markClosed() {
        let waiters = state.withLock { state in
            state.closed = true
            return state.closeWaiters.removeAll()
        }
        for waiter in waiters { waiter.resume() }
    }

    private func waitUntilClosed() async {
        // Not cancellable: a cancelled run starts a shutdown with no deadline (below), which ends this.
        _ = try? await Waiters.wait(in: state, \.closeWaiters, cancelled: nil) { state in
            state.closed ? .success(()) : nil
        }
    }
}

extension MessageBus: Service {
    /// Runs until graceful shutdown (or cancellation, which returns running handlers'
    /// messages at once), then shuts the bus down; also returns when ``shutdown()`` was
    /// called directly.
    public func run() async throws {
        await withTaskCancellationHandler {
            await withGracefulShutdownHandler {
                await waitUntilClosed()
            } onGracefulShutdown: {
                Task { try? await self.shutdown() }
            }
        } onCancel: {
            Task { try? await self.shutdown(deadline: .zero) }
        }
        try await shutdown()
    }
}

/// How one handler registration takes its messages.
public struct HandlerOptions: Sendable {
    /// How many handlers of this registration run at once. Messages with the same key never
    /// run at once, and run in order. Default 1.
    public var concurrency: Int
    /// How many unsettled messages the transport may hand over; default ``concurrency`` + 32.
    /// The margin keeps the stream flowing while settlements finish (a dead letter waiting
    /// for its broker confirm, an ack on its way): with a prefetch of exactly ``concurrency``,
    /// each such settlement would stall the registration for a broker round trip.
    public var prefetch: Int?

    /// The prefetch in force: ``prefetch``, else ``concurrency`` + 32.
    public var effectivePrefetch: Int { prefetch ?? max(concurrency, 1) + 32 }
    /// This registration's retries; `nil` uses the bus's ``MessageBus/Configuration/retryPolicy``.
    public var retryPolicy: RetryPolicy?
    /// Where a new group starts (needs a transport with replay for anything but `.latest`).
    public var startPosition: StartPosition
    /// Whether to skip already handled message ids, when the bus has a
    /// ``MessageBus/Configuration/deduplication`` store. Default `true`.
    public var deduplicate: Bool

    /// Creates options; every parameter has the documented default.
    public init(
        concurrency: Int = 1, prefetch: Int? = nil, retryPolicy: RetryPolicy? = nil,
        startPosition: StartPosition = .latest, deduplicate: Bool = true
    ) {
        self.concurrency = concurrency
        self.prefetch = prefetch
        self.retryPolicy = retryPolicy
        self.startPosition = startPosition
        self.deduplicate = deduplicate
    }

    /// Throws ``CourierError/Code/invalidConfiguration`` for values out of range.
    public func validate() throws(CourierError) {
        guard concurrency >= 1 else {
            throw CourierError(.invalidConfiguration, "handler concurrency is \(concurrency); it must be at least 1")
        }
        if let prefetch, prefetch < concurrency {
            throw CourierError(
                .invalidConfiguration, "prefetch \(prefetch) is below the handler concurrency \(concurrency); it must be at least that")
        }
    }
}

/// A running handler registration, returned by ``MessageBus/subscribe(to:group:options:handler:)``,
/// ``MessageBus/handle(_:options:handler:)`` and ``MessageBus/transform(_:group:options:_:)``.
public final class HandlerRegistration: Sendable {
    /// The topic and group, or queue, this registration reads.
    public let origin: DeliveryOrigin
    private let dispatcher: HandlerDispatcher
    /// Its handlers' outcomes, for ``MessageBus/health()``.
    let status: RegistrationStatus
    private let deadline: Duration
    private let onStop: @Sendable (HandlerRegistration) -> Void
    private let stopped = Mutex<Task<Void, Never>?>(nil)

    init(
        origin: DeliveryOrigin, dispatcher: HandlerDispatcher, status: RegistrationStatus, deadline: Duration,
        onStop: @escaping @Sendable (HandlerRegistration) -> Void
    ) {
        self.origin = origin
        self.dispatcher = dispatcher
        self.status = status
        self.deadline = deadline
        self.onStop = onStop
    }

    /// Stops taking messages, waits up to the bus's shutdown deadline for running handlers,
    /// and returns everything unsettled to the broker. The group (or queue) stays: messages
    /// keep arriving there for a later registration. Idempotent.
    public func stop() async {
        await stop(deadline: deadline)
    }

    /// ``stop()`` with its own deadline.
    public func stop(deadline: Duration) async {
        let task = stopped.withLock { task in
            if let task { return task }
            let made = Task { [self] in
                await dispatcher.stop(deadline: deadline)
                onStop(self)
            }
            task = made
            return made
        }
        await task.value
    }

    /// The error that ended this registration's intake, if its subscription failed.
    public var failure: (any Error)? { dispatcher.failure }
}

/// One registration's messages: the inbound pipeline (``BusMiddleware`` lists its steps in
/// order), then the settlement it decided — ack, nack with a delay, dead-letter, or nothing
/// (shutdown).
struct Handling<M: IntegrationMessage>: Sendable {
    let bus: MessageBus
    let policy: RetryPolicy
    let status: RegistrationStatus
    let metrics: HandlerMetrics
    let logger: Logger
    let pipeline: HandlingPipeline
    /// `M.messageType`, worked out once (it parses the type's name).
    let messageType = M.messageType

    init(
        bus: MessageBus, policy: RetryPolicy, status: RegistrationStatus, scope: String, deduplication: (any DeduplicationStore)?,
        metrics: HandlerMetrics,
        logger: Logger, handler: @escaping @Sendable (M, MessageContext) async throws -> Void
    ) {
        self.bus = bus
        self.policy = policy
        self.status = status
        self.metrics = metrics
        self.logger = logger
        let configuration = bus.configuration
        var steps: [any HandlingStep] = [
            DeadLetterStep(policy: policy, metrics: metrics),
            DelayedRetryStep(policy: policy, random: configuration.random),
            DecodeStep<M>(serializer: configuration.serializer, metrics: metrics, messageType: M.messageType),
        ]
        if let deduplication { steps.append(DeduplicationStep(store: deduplication, scope: scope, metrics: metrics)) }
        // Without a tracer (swift-distributed-tracing's no-op default) there is nothing to
        // extract, start or end per message.
        if bus.tracing { steps.append(TracingStep(tracer: bus.tracer, system: bus.transport.capabilities.system)) }
        steps += [
            ImmediateRetryStep(retries: policy.immediateRetries, metrics: metrics),
            MetricsStep(metrics: metrics),
        ]
        for (index, middleware) in configuration.middleware.enumerated() {
            steps.append(MiddlewareStep(middleware: middleware, index: index, messageType: M.messageType))
        }
        pipeline = HandlingPipeline(steps: steps) { [bus] state in
            let context = MessageContext(
                envelope: state.envelope, attempt: state.delivery.attempt, immediateRetry: state.immediateRetry,
                origin: state.delivery.origin, baseLogger: state.baseLogger, assignedLogger: state.assignedLogger,
                messageType: state.messageType, bus: bus
            )
            guard let message = state.message as? M else { return .failed(CourierError(.decodingFailed, "no decoded message"), calls: 1) }
            do {
                if let traceContext = state.traceContext {
                    try await ServiceContext.withValue(traceContext) {
                        try await MessageContext.$current.withValue(context) {
                            try await handler(message, context)
                        }
                    }
                } else {
                    // No tracer: the caller's service context stays as it is.
                    try await MessageContext.$current.withValue(context) {
                        try await handler(message, context)
                    }
                }
                return .handled
            } catch {
                return .failed(error, calls: 1)
            }
        }
    }

    /// Handles `delivery`; returns what is left to settle it when it is being dead-lettered
    /// (the copy's publish and confirm), for the dispatcher to finish without holding a slot.
    func process(_ delivery: Delivery) async -> HandlerDispatcher.Settlement? {
        metrics.delivered.increment()
        var state = HandlingState(delivery: delivery, logger: logger, messageType: messageType)
        let outcome = await pipeline.run(&state)
        if case .handled = outcome {
            // The common case, without the message's logger (made only to log a failure).
            status.succeeded()
            await ack(delivery, logger: state)
            return nil
        }
        let logger = state.logger
        switch outcome {
        case .handled, .alreadyHandled:
            status.succeeded()
            await ack(delivery, logger: state)
            return nil
        case .abandoned(let error):
            logger.notice(
                "the handler was cancelled at shutdown; its message goes back to the broker", metadata: ["courier-error": "\(error)"])
            return nil
        case .retryLater(let delay, let error):
            status.failed(ErrorText.describe(error))
            logger.warning(
                "the handler failed; retrying later",
                metadata: ["courier-error": "\(ErrorText.describe(error))", "courier-retry-delay": "\(delay)"]
            )
            do {
                try await delivery.nack(delay: delay)
                metrics.retriedLater.increment()
            } catch {
                logger.error("could not return the message for a retry", metadata: ["courier-error": "\(error)"])
            }
            return nil
        case .deadLetter(let reason):
            status.failed(reason.reason)
            return deadLettering(delivery, reason, logger: logger)
        case .failed(let error, let calls):
            status.failed(ErrorText.describe(error))
            // Unreachable: the dead-letter step, outermost, turns every failure into a decision.
            return deadLettering(
                delivery, DeadLetterStep.reason(for: error, calls: calls, attempt: delivery.attempt, policy: policy, metrics: metrics),
                logger: logger)
        }
    }

    private func ack(_ delivery: Delivery, logger state: HandlingState) async {
        do {
            try await delivery.ack()
            metrics.acked.increment()
        } catch {
            state.logger.warning("the ack failed; the message will be delivered again", metadata: ["courier-error": "\(error)"])
        }
    }

    /// The settlement that dead-letters `delivery`, for the dispatcher to run.
    private func deadLettering(_ delivery: Delivery, _ reason: DeadLetterReason, logger: Logger) -> HandlerDispatcher.Settlement {
        { [policy] in
            logger.error("dead-lettering the message", metadata: ["courier-reason": "\(reason.reason)"])
            do {
                try await delivery.deadLetter(
                    reason: reason.reason,
                    headers: [CourierHeader.errorType: reason.errorType, CourierHeader.errorMessage: reason.errorMessage]
                )
                reason.counter.increment()
            } catch {
                // The message stays with the broker; bring it back later rather than lose it.
                logger.error("could not dead-letter the message; it will be delivered again", metadata: ["courier-error": "\(error)"])
                try? await delivery.nack(delay: policy.initialDelay)
            }
        }
    }
}
