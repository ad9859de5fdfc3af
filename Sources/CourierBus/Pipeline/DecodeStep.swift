import Courier

/// Decode and type check: a message of another type, in a content type this bus cannot read,
/// or with a payload that does not decode is poison — dead-lettered without calling the steps
/// after this one (retrying cannot heal it).
struct DecodeStep<Message: IntegrationMessage>: HandlingStep {
    let serializer: any MessageSerializer
    let metrics: HandlerMetrics
    /// `Message.messageType`, worked out once (it parses the type's name).
    let messageType: String

    var name: String { "decode" }

    func enter(_ state: inout HandlingState) async -> Outcome? {
        let envelope = state.envelope
        if let type = envelope.type, type != messageType {
            return .deadLetter(
                DeadLetterReason(
                    reason: "unknown message type \(type) on \(state.delivery.origin): this handler takes \(messageType)",
                    errorType: "Courier.UnknownMessageType", errorMessage: "expected \(messageType), got \(type)",
                    counter: metrics.deadLetteredAsUnknown
                )
            )
        }
        if let contentType = envelope.contentType, !Self.sameMediaType(contentType, serializer.contentType) {
            return .deadLetter(
                DeadLetterReason(
                    reason: "content type \(contentType) cannot be read: this bus reads \(serializer.contentType)",
                    errorType: "Courier.UnsupportedContentType", errorMessage: "content type \(contentType)",
                    counter: metrics.deadLetteredAsPoison
                )
            )
        }
        do {
            state.message = try serializer.decode(Message.self, from: envelope.payload)
        } catch {
            let description = ErrorText.describe(error)
            return .deadLetter(
                DeadLetterReason(
                    reason: "the payload cannot be decoded as \(messageType): \(description)",
                    errorType: ErrorText.typeName(of: error), errorMessage: description, counter: metrics.deadLetteredAsPoison
                )
            )
        }
        return nil
    }

    static func sameMediaType(_ a: String, _ b: String) -> Bool {
        if a == b { return true }  // the usual case, without splitting and lowercasing
        func base(_ s: String) -> Substring {
            s.split(separator: ";", maxSplits: 1).first.map { $0.trimmingCharacters(in: .whitespaces)[...] } ?? ""
        }
        return base(a).lowercased() == base(b).lowercased()
    }
}
