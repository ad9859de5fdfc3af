import Courier
import Logging
import Metrics
import Synchronization
import Tracing

/// What the inbound pipeline decided for a delivery; ``Handling`` carries it out.
enum Outcome: Sendable {
    /// The handler succeeded: ack.
    case handled
    /// Handled before (de-duplication): ack without calling the handler.
    case alreadyHandled
    /// The handler failed, after `calls` calls (immediate retries included).
    case failed(any Error, calls: Int)
    /// Shutdown cancelled the handler: leave the delivery unsettled (the broker gets it back).
    case abandoned(any Error)
    /// Deliver again after `delay` (a nack with a delay).
    case retryLater(delay: Duration, error: any Error)
    /// Move it to the dead-letter queue.
    case deadLetter(DeadLetterReason)
}

/// Why a message goes to the dead-letter queue, and which counter counts it.
struct DeadLetterReason: Sendable {
    var reason: String
    var errorType: String
    var errorMessage: String
    var counter: Counter
}

/// One delivery on its way through the pipeline: what the steps learn about it.
struct HandlingState<Message: IntegrationMessage>: Sendable {
    let delivery: Delivery
    /// The envelope the handler gets (middlewares may change it).
    var envelope: Envelope
    var logger: Logger
    /// Set by the decode step.
    var message: Message?
    /// The tracing step's span context, for the handler calls.
    var traceContext: ServiceContext?
    /// Set by the immediate-retry step.
    var immediateRetry = 0

    init(delivery: Delivery, logger: Logger) {
        self.delivery = delivery
        self.envelope = delivery.envelope
        self.logger = logger
    }
}

/// A named step of the inbound pipeline: it runs around the steps after it (`next`), and may
/// decide the outcome without calling them.
protocol HandlingStep<Message>: Sendable {
    associatedtype Message: IntegrationMessage
    /// The step's name, as the documentation lists it.
    var name: String { get }
    func run(
        _ state: inout HandlingState<Message>, next: (inout HandlingState<Message>) async -> Outcome
    ) async -> Outcome
}

/// The ordered steps, outermost first, and the handler call at the end.
struct HandlingPipeline<Message: IntegrationMessage>: Sendable {
    let steps: [any HandlingStep<Message>]
    let terminal: @Sendable (inout HandlingState<Message>) async -> Outcome

    var names: [String] { steps.map(\.name) }

    func run(_ state: inout HandlingState<Message>) async -> Outcome {
        await run(from: 0, &state)
    }

    private func run(from index: Int, _ state: inout HandlingState<Message>) async -> Outcome {
        guard index < steps.count else { return await terminal(&state) }
        return await steps[index].run(&state) { state in await run(from: index + 1, &state) }
    }
}

/// Names and texts for errors, shared by the steps.
enum ErrorText {
    /// The error's type name, module-qualified (`Swift.DecodingError`); `String(reflecting:)`
    /// of a metatype goes through the runtime's demangler, so names are cached per type.
    static func typeName(of error: any Error) -> String {
        let type = Swift.type(of: error)
        let id = ObjectIdentifier(type)
        if let name = errorTypeNames.withLock({ $0[id] }) { return name }
        let name = String(reflecting: type)
        errorTypeNames.withLock { $0[id] = name }
        return name
    }

    /// An error's description, bounded to 1,000 characters for a header.
    static func describe(_ error: any Error) -> String {
        let text = String(describing: error)
        return text.count > 1000 ? String(text.prefix(1000)) + "…" : text
    }
}

/// Module-qualified names of error types, by type (see `ErrorText.typeName(of:)`).
private let errorTypeNames = Mutex<[ObjectIdentifier: String]>([:])
