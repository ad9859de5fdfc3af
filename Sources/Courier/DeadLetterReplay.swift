extension Transport {
    /// Sends dead letters of `origin` back to it, for its consumers only
    /// (``redeliver(_:to:)``), and keeps the others dead-lettered.
    ///
    /// Handles each message in the dead-letter queue at the start once: a chosen one is
    /// replayed as ``WireFormat/replayable(_:)`` (attempt 1, no dead-letter headers) to the
    /// origin its headers name (else `origin`), then acked; one not chosen is sent to the back
    /// of the dead-letter queue unchanged, then acked. Nothing is lost if this stops halfway: a
    /// message is acked only after its copy is confirmed. Stops when every message present at
    /// the start was handled, or after 10 s without a delivery (another consumer took the
    /// rest); kept copies that come round meanwhile are left in the queue.
    /// - Returns: How many were replayed and kept, and the chosen ids that were not there.
    public func replayDeadLetters(
        of origin: DeliveryOrigin, choosing chosen: @Sendable (Envelope) -> Bool
    ) async throws -> (replayed: Int, kept: Int) {
        let queue = deadLetterQueue(for: origin)
        var remaining = Set(try await browse(queue: queue, limit: 1_000_000).map(\.id))
        guard !remaining.isEmpty else { return (0, 0) }
        let subscription = try await consume(queue: queue, options: SubscriptionOptions(prefetch: 64))
        var iterator = subscription.makeAsyncIterator()
        var replayed = 0
        var kept = 0
        while !remaining.isEmpty {
            let timer = Task {
                try await Task.sleep(for: .seconds(10))
                await subscription.close()
            }
            let next = try await iterator.next()
            timer.cancel()
            guard let delivery = next else { break }
            let letter = delivery.envelope
            guard remaining.contains(letter.id) else {
                // A copy this replay kept (or a duplicate): it stays where it is, unsettled, and
                // the close below returns it. Messages still to come may be on another
                // partition that has not delivered yet, so keep reading.
                continue
            }
            if chosen(letter) {
                try await redeliver([WireFormat.replayable(letter)], to: WireFormat.origin(ofDeadLetter: letter) ?? origin)
                replayed += 1
            } else {
                try await send([letter], to: queue)
                kept += 1
            }
            try await delivery.ack()
            remaining.remove(letter.id)
        }
        await subscription.close()
        return (replayed, kept)
    }
}
