import Synchronization

/// An in-process message broker: the state that ``InMemoryTransport`` clients share.
///
/// Like a real broker it outlives its clients: several transports connected to one broker
/// see the same topics, groups and queues, and a transport that shuts down does not take the
/// messages with it. `memory://NAME` URLs connect to a process-wide broker of that name.
public final class InMemoryBroker: Sendable {
    /// What happens when a queue is at ``Configuration/queueCapacity``.
    public enum Overflow: Sendable, Hashable {
        /// `publish`/`send` wait until consumers make room (back-pressure).
        case backpressure
        /// `publish`/`send` throw ``CourierError/Code/queueFull``.
        case reject
    }

    /// Limits and behaviour of the broker; every value has a documented default.
    public struct Configuration: Sendable, Hashable {
        /// The most messages one queue or group holds (waiting, delayed and un-acked).
        /// Default 100,000: memory stays bounded, never grows without limit.
        public var queueCapacity: Int = 100_000
        /// The most payload bytes one queue or group holds (waiting, delayed and un-acked).
        /// Default 64 MiB, so that large payloads reach the bound long before
        /// ``queueCapacity`` does (100,000 × 16 KiB would be 1.6 GB). A queue that is empty
        /// always takes one message, however large (up to ``maxPayloadSize``). The same
        /// ``overflow`` policy applies as at the message count.
        public var queueByteCapacity: Int = 64 << 20
        /// What happens at capacity. Default ``Overflow/backpressure``.
        public var overflow: Overflow = .backpressure
        /// How many recent events each topic retains for replay (`earliest`, timestamps,
        /// rewinds). Default 10,000; 0 turns replay off.
        public var retention: Int = 10_000
        /// The most payload bytes each topic retains for replay; the oldest events go first.
        /// Default 64 MiB.
        public var retentionBytes: Int = 64 << 20
        /// The largest payload accepted, in bytes. Default 1 MiB, as Kafka's default.
        public var maxPayloadSize: Int = 1 << 20
        /// Whether messages with the same key are delivered one at a time, in order, even to
        /// competing consumers. Default true.
        public var ordered: Bool = true

        /// The defaults.
        public init() {}

        /// Throws ``CourierError/Code/invalidConfiguration`` for values out of range.
        public func validate() throws(CourierError) {
            guard queueCapacity >= 1 else {
                throw CourierError(.invalidConfiguration, "queueCapacity is \(queueCapacity); it must be at least 1")
            }
            guard queueByteCapacity >= 1 else {
                throw CourierError(.invalidConfiguration, "queueByteCapacity is \(queueByteCapacity); it must be at least 1")
            }
            guard retentionBytes >= 0 else {
                throw CourierError(.invalidConfiguration, "retentionBytes is \(retentionBytes); it must be 0 (no replay) or more")
            }
            guard retention >= 0 else {
                throw CourierError(.invalidConfiguration, "retention is \(retention); it must be 0 (no replay) or more")
            }
            guard maxPayloadSize >= 0 else {
                throw CourierError(.invalidConfiguration, "maxPayloadSize is \(maxPayloadSize); it cannot be negative")
            }
        }
    }

    /// The broker's limits.
    public let configuration: Configuration
    private let state = Mutex(State())

    private struct State {
        var topics: [String: InMemoryTopic] = [:]
        var queues: [String: InMemoryQueue] = [:]
    }

    /// Creates an empty broker.
    public init(configuration: Configuration = Configuration()) throws(CourierError) {
        try configuration.validate()
        self.configuration = configuration
    }

    private static let registry = Mutex<[String: InMemoryBroker]>([:])

    /// The process-wide broker called `name`, created with `configuration` on first use (later
    /// calls get the existing broker, whatever configuration they pass).
    public static func named(_ name: String, configuration: Configuration = Configuration()) throws(CourierError) -> InMemoryBroker {
        try configuration.validate()
        return registry.withLock { brokers in
            if let broker = brokers[name] { return broker }
            let broker = try! InMemoryBroker(configuration: configuration)
            brokers[name] = broker
            return broker
        }
    }

    func topic(named name: String) throws(CourierError) -> InMemoryTopic {
        if let topic = state.withLock({ $0.topics[name] }) { return topic }
        try DestinationName.validate(name, as: .topic)
        return state.withLock { state in
            if let topic = state.topics[name] { return topic }
            let topic = InMemoryTopic(name: name, broker: self)
            state.topics[name] = topic
            return topic
        }
    }

    func queue(named name: String) throws(CourierError) -> InMemoryQueue {
        if let queue = state.withLock({ $0.queues[name] }) { return queue }
        try DestinationName.validate(name, as: .queue)
        return state.withLock { state in
            if let queue = state.queues[name] { return queue }
            let queue = InMemoryQueue(origin: .queue(name), broker: self)
            state.queues[name] = queue
            return queue
        }
    }

    /// How many messages `queue` holds (waiting, delayed and un-acked); 0 if it does not exist.
    public func depth(ofQueue queue: String) -> Int {
        state.withLock { $0.queues[queue] }?.count ?? 0
    }

    /// How many messages `group` holds on `topic`; 0 if it does not exist.
    public func depth(ofGroup group: String, topic: String) -> Int {
        guard let topic = state.withLock({ $0.topics[topic] }) else { return 0 }
        return topic.allGroups().first { $0.origin.group == group }?.count ?? 0
    }

    /// Closes every queue: waits end and further use throws. Used when a transport that owns
    /// its broker shuts down.
    func close() {
        let (topics, queues) = state.withLock { ($0.topics.values, $0.queues.values) }
        for queue in queues { queue.close() }
        for topic in topics {
            for group in topic.allGroups() { group.close() }
        }
    }
}
