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

/// One delivery on its way through the pipeline: what the steps learn about it. Not generic
/// over the message type: a value of a generic type held across the steps' suspension points
/// cost an allocation per step and message.
struct HandlingState: Sendable {
    let delivery: Delivery
    /// The envelope the handler gets (middlewares may change it).
    var envelope: Envelope
    /// The registration's logger, without the message's metadata.
    let baseLogger: Logger
    /// A logger a middleware set, used as it is.
    var assignedLogger: Logger?
    /// The contract's type name the registration takes.
    let messageType: String
    /// The logger with the message's metadata, made when read (failure paths and
    /// middlewares): most messages never log.
    var logger: Logger {
        get {
            assignedLogger ?? MessageMetadata.logger(baseLogger, envelope: envelope, attempt: delivery.attempt, messageType: messageType)
        }
        set { assignedLogger = newValue }
    }
    /// Set by the decode step (the registration's contract type).
    var message: (any Sendable)?
    /// The tracing step's span, and its context for the handler calls.
    var span: (any Span)?
    var traceContext: ServiceContext?
    /// Set by the immediate-retry step.
    var immediateRetry = 0
    /// Calls of the steps after the immediate-retry step so far, for the dead-letter reason.
    var calls = 0
    /// When the current handler call started (the metrics step).
    var callStarted: ContinuousClock.Instant?

    init(delivery: Delivery, logger: Logger, messageType: String) {
        self.delivery = delivery
        self.envelope = delivery.envelope
        self.baseLogger = logger
        self.messageType = messageType
    }
}

/// A named step of the inbound pipeline. It runs around the steps after it, in three hooks
/// the pipeline calls in turn (no step calls the next, so a delivery's async frames stay
/// shallow: nested steps cost an allocation each per message):
/// - ``enter(_:)`` before them: `nil` goes on, an outcome decides without them;
/// - ``again(_:after:)`` after them: `true` runs them once more (immediate retries);
/// - ``leave(_:_:)`` with their outcome: what this step makes of it.
/// A step that must wrap the steps after it in a scope (a task-local, a user's middleware)
/// implements ``around(_:next:)`` instead.
protocol HandlingStep: Sendable {
    /// The step's name, as the documentation lists it.
    var name: String { get }
    func enter(_ state: inout HandlingState) async -> Outcome?
    func again(_ state: inout HandlingState, after outcome: Outcome) -> Bool
    func leave(_ state: inout HandlingState, _ outcome: Outcome) async -> Outcome
    /// Whether the step wraps the steps after it with ``around(_:next:)``.
    var wraps: Bool { get }
    func around(_ state: inout HandlingState, next: HandlingNext) async -> Outcome
}

extension HandlingStep {
    func enter(_ state: inout HandlingState) async -> Outcome? { nil }
    func again(_ state: inout HandlingState, after outcome: Outcome) -> Bool { false }
    func leave(_ state: inout HandlingState, _ outcome: Outcome) async -> Outcome { outcome }
    var wraps: Bool { false }
    func around(_ state: inout HandlingState, next: HandlingNext) async -> Outcome { await next(&state) }
}

/// The steps after a wrapping step, for it to call (`await next(&state)`).
struct HandlingNext: Sendable {
    let pipeline: HandlingPipeline
    let index: Int

    func callAsFunction(_ state: inout HandlingState) async -> Outcome {
        await pipeline.run(from: index, &state)
    }
}

/// The ordered steps, outermost first, and the handler call at the end.
struct HandlingPipeline: Sendable {
    let steps: [any HandlingStep]
    let terminal: @Sendable (inout HandlingState) async -> Outcome

    var names: [String] { steps.map(\.name) }

    func run(_ state: inout HandlingState) async -> Outcome {
        await run(from: 0, &state)
    }

    /// Runs the steps from `start` on: their `enter` hooks in order until one decides (or a
    /// wrapping step takes over the rest), the handler, then their `again` and `leave` hooks
    /// in reverse order.
    func run(from start: Int, _ state: inout HandlingState) async -> Outcome {
        var index = start
        var outcome: Outcome?
        while index < steps.count {
            let step = steps[index]
            if step.wraps {
                outcome = await step.around(&state, next: HandlingNext(pipeline: self, index: index + 1))
                break
            }
            if let decided = await step.enter(&state) {
                outcome = decided
                break
            }
            index += 1
        }
        var result: Outcome
        if let outcome {
            result = outcome
        } else {
            result = await terminal(&state)
        }
        // `index` decided (or wrapped the rest): the steps before it leave, innermost first.
        while index > start {
            index -= 1
            let step = steps[index]
            while step.again(&state, after: result) { result = await run(from: index + 1, &state) }
            result = await step.leave(&state, result)
        }
        return result
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
