import Courier
import CourierBus
import CourierOutbox
import PostgresNIO

/// What an inbox handler gets beside the message: the transaction's connection, the message's
/// context, and the outbox of the same transaction.
public struct PostgresInboxContext: Sendable {
    /// The connection inside the handler's transaction.
    public let connection: PostgresConnection
    /// The message being handled.
    public let message: MessageContext
    /// Follow-up messages: stored in this transaction, sent after it commits, carrying the
    /// handled message's correlation and causation ids.
    public let outbox: PostgresOutbox
}

extension MessageBus {
    /// Handles commands of type `C` exactly once in effect: `handler` runs inside a PostgreSQL
    /// transaction that also records the message id; the broker ack comes only after that
    /// transaction commits. A redelivered command whose id is recorded is acked without
    /// running `handler`; a failed handler or commit rolls everything back and goes through
    /// the retry policy (a database that is down included). What `handler` sends through
    /// ``PostgresInboxContext/outbox`` commits with it.
    @discardableResult
    public func handle<C: IntegrationCommand>(
        _ type: C.Type, inbox store: PostgresMessageStore, options: HandlerOptions = HandlerOptions(),
        handler: @escaping @Sendable (C, PostgresInboxContext) async throws -> Void
    ) async throws -> HandlerRegistration {
        let scope = InboxScope.queue(C.queue)
        return try await handle(C.self, options: options) { command, context in
            try await Self.handleOnce(store, scope: scope, command, context, handler)
        }
    }

    /// Subscribes `handler` to events of type `E` as `group`, exactly once in effect per
    /// group: as ``handle(_:inbox:options:handler:)`` for commands.
    @discardableResult
    public func subscribe<E: IntegrationEvent>(
        to type: E.Type, group: String, inbox store: PostgresMessageStore, options: HandlerOptions = HandlerOptions(),
        handler: @escaping @Sendable (E, PostgresInboxContext) async throws -> Void
    ) async throws -> HandlerRegistration {
        let scope = InboxScope.group(group, topic: E.topic)
        return try await subscribe(to: E.self, group: group, options: options) { event, context in
            try await Self.handleOnce(store, scope: scope, event, context, handler)
        }
    }

    private static func handleOnce<M: IntegrationMessage>(
        _ store: PostgresMessageStore, scope: String, _ message: M, _ context: MessageContext,
        _ handler: @escaping @Sendable (M, PostgresInboxContext) async throws -> Void
    ) async throws {
        let ran = try await store.handleOnce(scope: scope, messageID: context.messageID) { connection in
            try await handler(
                message, PostgresInboxContext(connection: connection, message: context, outbox: store.outbox(connection, causedBy: context))
            )
        }
        if !ran { context.logger.debug("already handled (inbox): acked without running the handler") }
    }
}
