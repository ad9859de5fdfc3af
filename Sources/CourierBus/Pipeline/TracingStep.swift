import Courier
import Tracing

/// Tracing: one `process` span (OpenTelemetry messaging conventions) around every call of
/// the handler, continuing the trace the publisher injected into the headers; failures are
/// recorded on it.
struct TracingStep<Message: IntegrationMessage>: HandlingStep {
    let tracer: any Tracer
    /// The transport's system name (`rabbitmq`, `kafka`, `memory`).
    let system: String

    var name: String { "tracing" }

    func run(_ state: inout HandlingState<Message>, next: (inout HandlingState<Message>) async -> Outcome) async -> Outcome {
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
        state.traceContext = span.context
        let outcome = await next(&state)
        switch outcome {
        case .failed(let error, _), .abandoned(let error):
            span.recordError(error)
            span.setStatus(SpanStatus(code: .error))
        default:
            break
        }
        span.end()
        return outcome
    }
}
