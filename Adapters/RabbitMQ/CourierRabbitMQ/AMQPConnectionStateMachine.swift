import Courier
import DequeModule

/// A publish waiting for its broker confirm, as the state machine sees it.
protocol AMQPPendingPublish {
    /// When it fails with `notConfirmed` if no confirm came.
    var deadline: ContinuousClock.Instant { get }
    /// Whether its caller has already heard the outcome (a failure of another message of the
    /// same call): it is dropped instead of republished.
    var isSettled: Bool { get }
}

/// The state of one AMQP connection, without librabbitmq: whether it is connected (and the
/// connection handle, only while it exists), the reconnect backoff, the publishes waiting for
/// confirms and their delivery tags, and which declarations this connection has made.
/// ``AMQPConnection`` feeds it events on its thread and carries out what it returns.
///
/// `Handle` is librabbitmq's `amqp_connection_state_t` in the adapter and a stand-in in the
/// unit tests; `Publish` a message with its confirm sink.
struct AMQPConnectionStateMachine<Handle, Publish: AMQPPendingPublish> {
    enum State {
        /// Not connected yet.
        case idle
        /// Connected; the handle is valid.
        case connected(Handle)
        /// The connection was lost; the next attempt is `attempt`, after the backoff.
        case reconnecting(attempt: Int)
        /// Stopping: the handle (if connected) is closed after the last commands.
        case closing(Handle?)
        /// Stopped for good.
        case closed
    }

    /// Reconnect delays: exponential from `initial` to `maximum`, each jittered down to half.
    struct Backoff: Sendable {
        var initial: Duration = .milliseconds(100)
        var maximum: Duration = .seconds(5)

        func delay(attempt: Int, random: Double) -> Duration {
            let doubled = initial * Int(1 << min(max(attempt - 1, 0), 20))
            return min(doubled, maximum) * (0.5 + 0.5 * min(max(random, 0), 1))
        }
    }

    /// What to do with a publish now.
    enum PublishDecision {
        /// Send it on the connection; then call ``sent(_:)``.
        case send(Handle)
        /// Disconnected or the publishing channel is not open: it waits for the reconnect.
        case held
        /// The connection is stopping: fail it.
        case refuse
    }

    private(set) var state = State.idle
    /// Counts the connections made; deliveries and acks carry it.
    private(set) var generation: UInt64 = 0
    /// Whether the publishing channel is open in confirm mode.
    private(set) var publisherReady = false
    let backoff: Backoff
    private var publishTag: UInt64 = 0
    /// Waiting for confirms, in publish order; tag 0 is not sent yet (held for a reconnect).
    private var unconfirmed = Deque<(tag: UInt64, publish: Publish)>()
    private var declared = Set<String>()

    init(backoff: Backoff = Backoff()) {
        self.backoff = backoff
    }

    /// The connection handle while connected or closing.
    var handle: Handle? {
        switch state {
        case .connected(let handle): handle
        case .closing(let handle): handle
        case .idle, .reconnecting, .closed: nil
        }
    }

    var isClosing: Bool {
        switch state {
        case .closing, .closed: true
        default: false
        }
    }

    /// How many publishes wait for a confirm (or for the reconnect).
    var unconfirmedCount: Int { unconfirmed.count }

    // MARK: Connection

    /// A connection was opened (first or after a loss): a new generation, nothing declared yet.
    mutating func connected(_ handle: Handle) {
        generation += 1
        declared.removeAll()
        publisherReady = false
        switch state {
        case .closing:
            state = .closing(handle)
        default:
            state = .connected(handle)
        }
    }

    /// The publishing channel is open in confirm mode (after connecting, or after the broker
    /// closed it): tags start again from 1.
    mutating func publisherOpened() {
        publishTag = 0
        publisherReady = true
    }

    /// What waits for a confirm that can never come (sent on a channel since closed) or for
    /// the reconnect, in publish order, to publish again — once the publishing channel is
    /// open; nothing before. Settled ones are dropped.
    mutating func republishable() -> [Publish] {
        guard publisherReady else { return [] }
        let pending = unconfirmed.filter { !$0.publish.isSettled }.map(\.publish)
        unconfirmed.removeAll()
        return pending
    }

    /// The publishing channel closed (the broker refused something on it).
    mutating func publisherClosed() {
        publisherReady = false
    }

    /// The connection is broken: returns the handle to destroy. Unconfirmed publishes stay,
    /// to be published again after the reconnect; every declaration must be made again.
    mutating func lost() -> Handle? {
        let handle = self.handle
        publisherReady = false
        declared.removeAll()
        switch state {
        case .closing:
            state = .closing(nil)
        case .closed:
            break
        default:
            state = .reconnecting(attempt: 1)
        }
        return handle
    }

    /// An attempt to reconnect failed: returns the handle to destroy (a connection opened
    /// before the failure) and how long to wait before the next attempt.
    mutating func reconnectFailed(random: Double) -> (handle: Handle?, delay: Duration) {
        let handle = self.handle
        publisherReady = false
        guard case .reconnecting(let attempt) = state else {
            if case .connected = state { state = .reconnecting(attempt: 2) }
            return (handle, backoff.delay(attempt: 1, random: random))
        }
        state = .reconnecting(attempt: attempt + 1)
        return (handle, backoff.delay(attempt: attempt, random: random))
    }

    /// The attempt of the current reconnect, if reconnecting.
    var reconnectAttempt: Int? {
        if case .reconnecting(let attempt) = state { attempt } else { nil }
    }

    /// Stop was asked: whatever the state, no more reconnects.
    mutating func stop() {
        switch state {
        case .connected(let handle): state = .closing(handle)
        case .idle, .reconnecting: state = .closing(nil)
        case .closing, .closed: break
        }
    }

    /// The thread ends: returns the handle to close and destroy, and the publishes to fail.
    mutating func finish() -> (handle: Handle?, unconfirmed: [Publish]) {
        let handle = self.handle
        state = .closed
        publisherReady = false
        let pending = unconfirmed.map(\.publish)
        unconfirmed.removeAll()
        return (handle, pending)
    }

    // MARK: Publishing

    mutating func publish(_ publish: Publish) -> PublishDecision {
        if isClosing { return .refuse }
        guard publisherReady, case .connected(let handle) = state else {
            unconfirmed.append((0, publish))
            return .held
        }
        return .send(handle)
    }

    /// `publish` went out on the publishing channel: it waits for the confirm of the next tag.
    mutating func sent(_ publish: Publish) {
        publishTag += 1
        unconfirmed.append((publishTag, publish))
    }

    /// Sending `publish` failed (the connection broke): it waits for the reconnect.
    mutating func hold(_ publish: Publish) {
        unconfirmed.append((0, publish))
    }

    /// A `basic.ack` (or `basic.nack`) for `tag`, or every tag up to it: the publishes it settles.
    mutating func confirm(upTo tag: UInt64, multiple: Bool) -> [Publish] {
        var settled: [Publish] = []
        if multiple {
            while let first = unconfirmed.first, first.tag != 0, first.tag <= tag {
                settled.append(unconfirmed.removeFirst().publish)
            }
        } else if let index = unconfirmed.firstIndex(where: { $0.tag == tag }) {
            settled.append(unconfirmed.remove(at: index).publish)
        }
        return settled
    }

    /// The publishes whose confirm is overdue at `now` (removed, to fail); settled ones are
    /// dropped as well.
    mutating func expire(now: ContinuousClock.Instant) -> [Publish] {
        guard let first = unconfirmed.first, first.publish.deadline < now else { return [] }
        var expired: [Publish] = []
        unconfirmed.removeAll { entry in
            guard entry.publish.deadline < now else { return entry.publish.isSettled }
            expired.append(entry.publish)
            return true
        }
        return expired
    }

    // MARK: Declarations

    /// Whether `key` (an exchange, a queue, a binding) still has to be declared on this connection.
    func needsDeclaration(_ key: String) -> Bool { !declared.contains(key) }

    mutating func declared(_ key: String) { declared.insert(key) }

    /// Forgets every declaration (a queue may have been deleted): all are made again.
    mutating func forgetDeclarations() { declared.removeAll() }
}
