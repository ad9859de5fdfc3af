import Courier

/// A user's ``BusMiddleware`` around each call of the steps after it (the handler).
struct MiddlewareStep: HandlingStep {
    let middleware: any BusMiddleware
    let index: Int
    /// The contract's type name the handler takes.
    let messageType: String

    var name: String { "middleware \(index + 1) (\(Swift.type(of: middleware)))" }

    var wraps: Bool { true }

    func around(_ state: inout HandlingState, next: HandlingNext) async -> Outcome {
        let message = InboundMessage(
            envelope: state.envelope, messageType: messageType, attempt: state.delivery.attempt,
            immediateRetry: state.immediateRetry, origin: state.delivery.origin, logger: state.logger
        )
        var inner: Outcome?
        do {
            try await middleware.handle(message) { message in
                state.envelope = message.envelope
                state.logger = message.logger
                let outcome = await next(&state)
                inner = outcome
                if case .failed(let error, _) = outcome { throw error }
            }
        } catch {
            return .failed(error, calls: 1)
        }
        switch inner {
        case nil, .failed: return .handled  // not called, or its failure caught: handled
        case let outcome?: return outcome
        }
    }
}
