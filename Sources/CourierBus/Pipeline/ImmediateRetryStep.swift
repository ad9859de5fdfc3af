import Courier

/// Immediate retries: a failed call runs the steps after this one again, at once, up to the
/// policy's ``RetryPolicy/immediateRetries``; a ``NonRetriableError`` stops at once. A failure
/// while the bus shuts down (the handler was cancelled) is abandoned: the broker gets the
/// message back.
struct ImmediateRetryStep<Message: IntegrationMessage>: HandlingStep {
    let retries: Int
    let metrics: HandlerMetrics

    var name: String { "immediate retries" }

    func run(_ state: inout HandlingState<Message>, next: (inout HandlingState<Message>) async -> Outcome) async -> Outcome {
        var calls = 0
        var retry = 0
        while true {
            if retry > 0 {
                metrics.retriedImmediately.increment()
                state.logger.debug("retrying at once", metadata: ["courier-immediate-retry": "\(retry)"])
            }
            state.immediateRetry = retry
            calls += 1
            let outcome = await next(&state)
            guard case .failed(let error, _) = outcome else { return outcome }
            if Task.isCancelled { return .abandoned(error) }
            if error is any NonRetriableError || retry >= retries { return .failed(error, calls: calls) }
            retry += 1
        }
    }
}
