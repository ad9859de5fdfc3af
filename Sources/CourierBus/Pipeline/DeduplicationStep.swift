import Courier

/// De-duplication: a message whose id the store has seen in this scope is acked without
/// calling the steps after this one; a message handled now is recorded. A store that fails
/// is logged and the message handled anyway (at-least-once wins over at-most-once).
struct DeduplicationStep: HandlingStep {
    let store: any DeduplicationStore
    /// The registration's scope: destination, and group for a topic.
    let scope: String
    let metrics: HandlerMetrics

    var name: String { "de-duplication" }

    func enter(_ state: inout HandlingState) async -> Outcome? {
        do {
            if try await store.wasHandled(state.delivery.envelope.id, scope: scope) {
                state.logger.debug("already handled; acked without calling the handler")
                metrics.deduplicated.increment()
                return .alreadyHandled
            }
        } catch {
            state.logger.warning("the deduplication store failed; handling the message anyway", metadata: ["courier-error": "\(error)"])
        }
        return nil
    }

    func leave(_ state: inout HandlingState, _ outcome: Outcome) async -> Outcome {
        guard case .handled = outcome else { return outcome }
        do {
            try await store.markHandled(state.delivery.envelope.id, scope: scope)
        } catch {
            state.logger.warning("the deduplication store failed to record the message", metadata: ["courier-error": "\(error)"])
        }
        return outcome
    }
}
