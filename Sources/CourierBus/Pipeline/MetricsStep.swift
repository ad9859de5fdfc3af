import Courier

/// Metrics: the duration of every call of the steps after this one (the handler), by outcome
/// (`courier_handler_duration_seconds`, `outcome` success or failure).
struct MetricsStep<Message: IntegrationMessage>: HandlingStep {
    let metrics: HandlerMetrics

    var name: String { "metrics" }

    func run(_ state: inout HandlingState<Message>, next: (inout HandlingState<Message>) async -> Outcome) async -> Outcome {
        let start = ContinuousClock.now
        let outcome = await next(&state)
        let nanoseconds = (ContinuousClock.now - start).nanoseconds
        if case .failed = outcome {
            metrics.failed.recordNanoseconds(nanoseconds)
        } else {
            metrics.succeeded.recordNanoseconds(nanoseconds)
        }
        return outcome
    }
}
