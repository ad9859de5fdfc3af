import Courier

/// Immediate retries: a failed call runs the steps after this one again, at once, up to the
/// policy's ``RetryPolicy/immediateRetries``; a ``NonRetriableError`` stops at once. A failure
/// while the bus shuts down (the handler was cancelled) is abandoned: the broker gets the
/// message back.
struct ImmediateRetryStep: HandlingStep {
    let retries: Int
    let metrics: HandlerMetrics

    var name: String { "immediate retries" }

    func enter(_ state: inout HandlingState) async -> Outcome? {
        state.immediateRetry = 0
        state.calls = 1
        return nil
    }

    func again(_ state: inout HandlingState, after outcome: Outcome) -> Bool {
        guard case .failed(let error, _) = outcome, !Task.isCancelled, !(error is any NonRetriableError), state.immediateRetry < retries
        else { return false }
        state.immediateRetry += 1
        state.calls += 1
        metrics.retriedImmediately.increment()
        state.logger.debug("retrying at once", metadata: ["courier-immediate-retry": "\(state.immediateRetry)"])
        return true
    }

    func leave(_ state: inout HandlingState, _ outcome: Outcome) async -> Outcome {
        guard case .failed(let error, _) = outcome else { return outcome }
        return Task.isCancelled ? .abandoned(error) : .failed(error, calls: state.calls)
    }
}
