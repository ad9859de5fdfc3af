import Courier

/// The state of one RabbitMQ subscription, without librabbitmq: its channel and the
/// generations that make delivery tags unique across channels and connections, the
/// deliveries handed out and not yet settled, and the buffer that keeps per-key order.
/// ``RabbitMQConsumer`` holds it under its lock, with the waiting `next()` calls beside it.
///
/// A tag a subscriber sees is the broker's delivery tag in its low 48 bits and the channel's
/// generation above them: after a channel or connection is lost, an ack of an older delivery
/// is recognised as stale (the broker redelivers that message anyway) instead of acking an
/// unrelated delivery of the new channel with the same broker tag.
struct RabbitMQConsumerState<Item: Sendable>: Sendable {
    static var tagBits: UInt64 { 48 }
    static var tagMask: UInt64 { (1 << 48) - 1 }

    struct Outstanding: Sendable {
        var envelope: Envelope
        var attempt: Int
    }

    /// What settling a tag found.
    enum Settlement: Sendable {
        /// A delivery of the current channel: ack it there.
        case current(Outstanding, channel: UInt16, connectionGeneration: UInt64)
        /// A delivery of a channel or connection since lost: the broker redelivers it anyway.
        case stale(Outstanding?)
    }

    private(set) var channel: UInt16 = 0
    /// Counts the opens of this consumer's channel; the top bits of every delivery tag.
    private(set) var generation: UInt64 = 0
    private(set) var connectionGeneration: UInt64 = 0
    private(set) var buffer: KeyOrderGate<Item>
    private(set) var outstanding: [UInt64: Outstanding] = [:]
    private(set) var closed = false
    /// Why the subscription ended, when it was not closed by its owner.
    private(set) var failure: CourierError?

    /// `key` gives an item's ordering key; `ordered` false hands out without waiting for
    /// earlier items of a key to be settled (browsing).
    init(ordered: Bool, key: @escaping @Sendable (Item) -> String?) {
        buffer = KeyOrderGate(ordered: ordered, key: key)
    }

    /// The consumer's channel was (re)opened on connection `connectionGeneration`.
    mutating func opened(channel: UInt16, connectionGeneration: UInt64) {
        self.channel = channel
        generation += 1
        self.connectionGeneration = connectionGeneration
    }

    /// A delivery arrived with the broker's `deliveryTag`: the tag it is handed out with, or
    /// `nil` when the subscription is closed. `item` makes the buffered item from that tag.
    mutating func deliver(deliveryTag: UInt64, envelope: Envelope, attempt: Int, item: (UInt64) -> Item) -> UInt64? {
        guard !closed else { return nil }
        let tag = (generation << Self.tagBits) | (deliveryTag & Self.tagMask)
        outstanding[tag] = Outstanding(envelope: envelope, attempt: attempt)
        buffer.append(item(tag))
        return tag
    }

    /// The next item to hand out, if any may go now.
    mutating func next() -> Item? {
        buffer.next()
    }

    /// The channel was lost: buffered deliveries come again from the broker; in-flight keys
    /// are void. `final` ends the subscription with `error` (unless it is a plain close).
    mutating func channelLost(_ error: CourierError, final: Bool, tag: (Item) -> UInt64) {
        for item in buffer.removeAll(forgetInFlight: true) { outstanding[tag(item)] = nil }
        guard final else { return }
        closed = true
        if error.code != .transportClosed { failure = error }
    }

    /// The owner closes the subscription: the channel to close (`0`: none, or closed
    /// already). Everything outstanding goes back to the broker with the channel.
    mutating func close() -> UInt16? {
        guard !closed else { return nil }
        closed = true
        outstanding.removeAll()
        _ = buffer.removeAll(forgetInFlight: true)
        return channel
    }

    /// Removes `tag` from the outstanding deliveries and releases its key; `nil` for a tag
    /// settled before (or returned by ``close()``).
    mutating func settle(_ tag: UInt64) -> Settlement? {
        let current = tag >> Self.tagBits == generation
        guard let settled = outstanding.removeValue(forKey: tag) else {
            return current || closed ? nil : .stale(nil)
        }
        guard current else { return .stale(settled) }
        buffer.release(key: settled.envelope.key)
        return .current(settled, channel: channel, connectionGeneration: connectionGeneration)
    }

    /// What `tag` holds without settling it: `.none` for a stale tag of a lost channel
    /// (nothing to do), `nil` for a tag settled before.
    func peek(_ tag: UInt64) -> Outstanding?? {
        if let found = outstanding[tag] { return .some(found) }
        return tag >> Self.tagBits != generation && !closed ? .some(nil) : nil
    }
}
