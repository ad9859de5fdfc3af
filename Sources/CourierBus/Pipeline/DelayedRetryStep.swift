import Courier

/// Delayed retry: a retriable failure while the policy's ``RetryPolicy/delayedRetries`` are
/// not used up becomes a redelivery after the policy's delay (a nack with that delay).
struct DelayedRetryStep: HandlingStep {
    let policy: RetryPolicy
    let random: @Sendable () -> Double

    var name: String { "delayed retry" }

    func leave(_ state: inout HandlingState, _ outcome: Outcome) async -> Outcome {
        guard case .failed(let error, _) = outcome, !(error is any NonRetriableError),
            state.delivery.attempt <= policy.delayedRetries
        else { return outcome }
        return .retryLater(delay: policy.delay(beforeDelayedRetry: state.delivery.attempt, random: random()), error: error)
    }
}
