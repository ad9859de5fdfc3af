/// The life of the transport's producer, without librdkafka: the client and its topic handles
/// exist only in the states that hold them; ``KafkaProducer`` feeds it events under its lock
/// and carries out what it returns.
///
/// | State | produce | poll thread | handles |
/// |---|---|---|---|
/// | `open` | yes | polls | held |
/// | `flushing` | refused | polls (delivery reports of the flush) | held |
/// | `stopping` | refused | told to stop | held |
/// | `destroying` | refused | stopped | handed to the closer |
/// | `closed` | refused | stopped | gone |
///
/// Callers that use the handles (a batch being enqueued, a blocking topic lookup) hold them
/// from ``acquire(topic:makeTopic:)`` to ``release()``; the closer waits until none does
/// before flushing, so no handle is used after it is destroyed and no message is enqueued
/// after the flush.
///
/// `Client` is ``RDKafkaClient`` in the adapter and a stand-in in the unit tests; `Topic` a
/// topic handle.
struct KafkaProducerStateMachine<Client, Topic> {
    struct Handles {
        var client: Client
        var topics: [String: Topic] = [:]
    }

    enum State {
        case open(Handles)
        /// ``beginClose()`` was called: outstanding deliveries are flushed, then purged.
        case flushing(Handles)
        /// Flushed: the poll thread stops at its next turn.
        case stopping(Handles)
        /// The poll thread has stopped; the closer destroys the handles it was given.
        case destroying
        /// Everything is destroyed.
        case closed
    }

    /// What a produce (or a topic lookup) may do now.
    enum ProduceDecision {
        /// Go on with the client and `topic`'s handle.
        case produce(Client, Topic)
        /// The producer is closing or closed.
        case refuse
    }

    /// What a call to close must do.
    enum CloseAction {
        /// This caller closes: wait until ``isIdle``, flush with the client, call
        /// ``flushed()``, wait for the poll thread, call ``pollStopped()`` and destroy what it
        /// returns, then ``destroyed()``.
        case flush(Client)
        /// Another caller is closing: wait until ``isClosed``.
        case wait
        /// Already closed.
        case none
    }

    private(set) var state: State
    /// Callers holding the handles.
    private(set) var users = 0

    init(client: Client) {
        state = .open(Handles(client: client))
    }

    /// Whether produce calls are accepted.
    var isOpen: Bool {
        if case .open = state { return true }
        return false
    }

    var isClosed: Bool {
        if case .closed = state { return true }
        return false
    }

    /// Whether the poll thread goes on serving delivery reports.
    var shouldPoll: Bool {
        switch state {
        case .open, .flushing: true
        case .stopping, .destroying, .closed: false
        }
    }

    /// Whether no caller holds the handles.
    var isIdle: Bool { users == 0 }

    /// The client and `topic`'s handle (made with `makeTopic` on first use and kept until
    /// close), held until ``release()``.
    mutating func acquire(topic: String, makeTopic: (Client, String) -> Topic) -> ProduceDecision {
        guard case .open(var handles) = state else { return .refuse }
        users += 1
        if let handle = handles.topics[topic] { return .produce(handles.client, handle) }
        let handle = makeTopic(handles.client, topic)
        handles.topics[topic] = handle
        state = .open(handles)
        return .produce(handles.client, handle)
    }

    /// The client alone, held until ``release()``; `nil` once a close has begun.
    mutating func acquireClient() -> Client? {
        guard case .open(let handles) = state else { return nil }
        users += 1
        return handles.client
    }

    /// A caller is done with the handles. True when it was the last while a close waits.
    mutating func release() -> Bool {
        precondition(users > 0, "release without acquire")
        users -= 1
        return users == 0 && !isOpen
    }

    /// A caller wants the producer closed.
    mutating func beginClose() -> CloseAction {
        switch state {
        case .open(let handles):
            state = .flushing(handles)
            return .flush(handles.client)
        case .flushing, .stopping, .destroying:
            return .wait
        case .closed:
            return .none
        }
    }

    /// The closer's flush and purge are done: the poll thread may stop.
    mutating func flushed() {
        guard case .flushing(let handles) = state else { return }
        state = .stopping(handles)
    }

    /// The poll thread has stopped: the handles to destroy (topics first), or `nil` if this
    /// came out of order or a caller still holds them.
    mutating func pollStopped() -> Handles? {
        guard case .stopping(let handles) = state, users == 0 else { return nil }
        state = .destroying
        return handles
    }

    /// The closer has destroyed the handles.
    mutating func destroyed() {
        guard case .destroying = state else { return }
        state = .closed
    }
}
