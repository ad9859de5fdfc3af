/// The well-known header names, identical on every transport.
///
/// They follow the CloudEvents 1.0 *binary content mode*: each CloudEvents attribute travels
/// as a header named `ce_<attribute>`, and the payload's media type as `content-type`. So a
/// service written in another language reads a Courier message with any CloudEvents SDK, and
/// Courier reads theirs. Courier's own attributes are CloudEvents extensions prefixed
/// `courier`; W3C trace context uses the header names of the W3C Trace Context specification.
///
/// Adapters write ``id``, ``time``, ``specVersion`` and ``partitionKey`` from the
/// ``Envelope`` fields; consumers see those as `Envelope.id`, `.timestamp` and `.key`, never as
/// headers.
public enum CourierHeader {
    /// CloudEvents `id`: the message id (``Envelope/id``).
    public static let id = "ce_id"
    /// CloudEvents `type`: the message type name with its version, e.g. `CustomerRegistered.v2`.
    public static let type = "ce_type"
    /// CloudEvents `source`: the producing service, e.g. `/web-store`.
    public static let source = "ce_source"
    /// CloudEvents `time`: creation time, RFC 3339 (``Envelope/timestamp``).
    public static let time = "ce_time"
    /// CloudEvents `specversion`: always `1.0`.
    public static let specVersion = "ce_specversion"
    /// CloudEvents `subject`: what the message is about (optional).
    public static let subject = "ce_subject"
    /// CloudEvents `dataschema`: a URI naming the payload's schema (optional).
    public static let dataSchema = "ce_dataschema"
    /// The payload's media type, such as `application/json` (CloudEvents `datacontenttype`).
    public static let contentType = "content-type"
    /// CloudEvents partitioning extension: the ordering key (``Envelope/key``).
    public static let partitionKey = "ce_partitionkey"
    /// Courier extension: the id of the conversation this message belongs to.
    public static let correlationID = "ce_correlationid"
    /// Courier extension: the id of the message that caused this one.
    public static let causationID = "ce_causationid"
    /// Courier extension: the delivery attempt carried across redeliveries (1 on first delivery).
    public static let attempt = "ce_courierattempt"
    /// Courier extension, on dead letters: why the message was dead-lettered.
    public static let deadLetterReason = "ce_courierdlreason"
    /// Courier extension, on dead letters: `topic` or `queue`, the kind of the origin.
    public static let deadLetterOriginKind = "ce_courierdlkind"
    /// Courier extension, on dead letters: the topic or queue the message was consumed from.
    public static let deadLetterOrigin = "ce_courierdlorigin"
    /// Courier extension, on dead letters from a topic: the subscription group.
    public static let deadLetterGroup = "ce_courierdlgroup"
    /// Courier extension, on dead letters: how many delivery attempts the message had.
    public static let deadLetterAttempts = "ce_courierdlattempts"
    /// Courier extension, on dead letters: when it was dead-lettered, RFC 3339.
    public static let deadLetterTime = "ce_courierdltime"
    /// Courier extension, on dead letters from a failing handler: the error's type.
    public static let errorType = "ce_couriererrortype"
    /// Courier extension, on dead letters from a failing handler: the error's description.
    public static let errorMessage = "ce_couriererror"
    /// W3C Trace Context `traceparent`.
    public static let traceParent = "traceparent"
    /// W3C Trace Context `tracestate`.
    public static let traceState = "tracestate"

    /// The CloudEvents spec version Courier writes.
    public static let specVersionValue = "1.0"

    /// Every well-known name, for tools and tests.
    public static let all: [String] = [
        id, type, source, time, specVersion, subject, dataSchema, contentType, partitionKey,
        correlationID, causationID, attempt, deadLetterReason, deadLetterOriginKind,
        deadLetterOrigin, deadLetterGroup, deadLetterAttempts, deadLetterTime, errorType, errorMessage,
        traceParent, traceState,
    ]
}
