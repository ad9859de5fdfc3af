import Courier
import Tracing

/// Tracing: one `process` span (OpenTelemetry messaging conventions) around every call of
/// the handler, continuing the trace the publisher injected into the headers; failures are
/// recorded on it.
struct TracingStep: HandlingStep {
    let tracer: any Tracer
    /// The transport's system name (`rabbitmq`, `kafka`, `memory`).
    let system: String

    var name: String { "tracing" }

    func enter(_ state: inout HandlingState) async -> Outcome? {
        let envelope = state.envelope
        let origin = state.delivery.origin
        var traceContext = ServiceContext.topLevel
        tracer.extract(envelope.headers, into: &traceContext, using: HeadersExtractor())
        let span = tracer.startSpan("\(origin.destination) process", context: traceContext, ofKind: .consumer)
        span.attributes["messaging.system"] = system
        span.attributes["messaging.destination.name"] = origin.destination
        if let group = origin.group { span.attributes["messaging.consumer.group.name"] = group }
        span.attributes["messaging.operation.type"] = "process"
        span.attributes["messaging.message.id"] = envelope.id
        span.attributes["messaging.message.conversation_id"] = envelope.correlationID ?? envelope.id
        span.attributes["courier.attempt"] = state.delivery.attempt
        state.span = span
        state.traceContext = span.context
        return nil
    }

    func leave(_ state: inout HandlingState, _ outcome: Outcome) async -> Outcome {
        guard let span = state.span else { return outcome }
        switch outcome {
        case .failed(let error, _), .abandoned(let error):
            span.recordError(error)
            span.setStatus(SpanStatus(code: .error))
        default:
            break
        }
        span.end()
        state.span = nil
        return outcome
    }
}
