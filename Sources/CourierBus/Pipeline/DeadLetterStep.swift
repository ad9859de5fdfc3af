import Courier

/// Dead-letter: a failure that no step before has turned into a retry — a
/// ``NonRetriableError``, or the last attempt — goes to the dead-letter queue with the error's
/// type and text in its headers.
struct DeadLetterStep: HandlingStep {
    let policy: RetryPolicy
    let metrics: HandlerMetrics

    var name: String { "dead-letter" }

    /// A delivery already past the policy's last attempt came back unsettled (a consumer
    /// crashed or lost its connection while handling it, and the transport counts that, as
    /// RabbitMQ's quorum queues do): it goes to the dead-letter queue without another call,
    /// so a message that kills its consumer cannot do so forever.
    func enter(_ state: inout HandlingState) async -> Outcome? {
        let last = policy.delayedRetries + 1
        guard state.delivery.attempt > last else { return nil }
        let attempt = state.delivery.attempt
        return .deadLetter(
            DeadLetterReason(
                reason:
                    "attempt \(attempt) is past the retry policy's \(last): the message came back unsettled, its consumer stopped or crashed while handling it",
                errorType: "Courier.AttemptsExhausted", errorMessage: "attempt \(attempt) of \(last)",
                counter: metrics.deadLetteredAsPoison))
    }

    func leave(_ state: inout HandlingState, _ outcome: Outcome) async -> Outcome {
        guard case .failed(let failure, let calls) = outcome else { return outcome }
        return .deadLetter(Self.reason(for: failure, calls: calls, attempt: state.delivery.attempt, policy: policy, metrics: metrics))
    }

    /// Why a handler's failure goes to the dead-letter queue, with the error's type and text.
    static func reason(for failure: any Error, calls: Int, attempt: Int, policy: RetryPolicy, metrics: HandlerMetrics) -> DeadLetterReason {
        let description = ErrorText.describe(failure)
        let why =
            failure is any NonRetriableError
            ? "the handler failed with a non-retriable error"
            : "the handler failed \(calls) times on attempt \(attempt) (of \(policy.delayedRetries + 1))"
        return DeadLetterReason(
            reason: "\(why): \(description)", errorType: ErrorText.typeName(of: failure), errorMessage: description,
            counter: metrics.deadLetteredByHandler
        )
    }
}
