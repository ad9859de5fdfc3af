import Courier

/// Delayed retry: a retriable failure while the policy's ``RetryPolicy/delayedRetries`` are
/// not used up becomes a redelivery after the policy's delay (a nack with that delay).
struct DelayedRetryStep<Message: IntegrationMessage>: HandlingStep {
    let policy: RetryPolicy
    let random: @Sendable () -> Double

    var name: String { "delayed retry" }

    func run(_ state: inout HandlingState<Message>, next: (inout HandlingState<Message>) async -> Outcome) async -> Outcome {
        let outcome = await next(&state)
        guard case .failed(let error, _) = outcome, !(error is any NonRetriableError),
            state.delivery.attempt <= policy.delayedRetries
        else { return outcome }
        return .retryLater(delay: policy.delay(beforeDelayedRetry: state.delivery.attempt, random: random()), error: error)
    }
}
