import Courier

/// Metrics: the duration of every call of the steps after this one (the handler), by outcome
/// (`courier_handler_duration_seconds`, `outcome` success or failure).
struct MetricsStep: HandlingStep {
    let metrics: HandlerMetrics

    var name: String { "metrics" }

    func enter(_ state: inout HandlingState) async -> Outcome? {
        state.callStarted = .now
        return nil
    }

    func leave(_ state: inout HandlingState, _ outcome: Outcome) async -> Outcome {
        guard let start = state.callStarted else { return outcome }
        let nanoseconds = (ContinuousClock.now - start).nanoseconds
        if case .failed = outcome {
            metrics.failed.recordNanoseconds(nanoseconds)
        } else {
            metrics.succeeded.recordNanoseconds(nanoseconds)
        }
        return outcome
    }
}
