import Courier
import DequeModule

/// The state of one consumer-group member, without librdkafka: what has been polled, what is
/// handed out, what may be committed, when to pause, and what a revoke gives up.
///
/// ``KafkaGroupMember`` drives it from its thread (polls, rebalance callbacks) and from the
/// subscriptions (hand-outs, settlements); every librdkafka call stays in the member. The
/// phases:
///
/// | phase | hands out | polls | entered by |
/// |---|---|---|---|
/// | `joining` | — | yes | creation |
/// | `running` | yes | yes, paused above the buffer bound | ``assign(_:)`` |
/// | `revoking` | not from the revoked partitions | no (inside the rebalance callback) | ``beginRevoke(_:)`` |
/// | `closing` | no | no | ``beginClose()`` |
/// | `closed` | no | no | ``finishClose()`` |
///
/// - Flow: librdkafka keeps fetching; the member pulls messages into its buffer until
///   ``Limits/messages`` or ``Limits/bytes`` are buffered (polled and not settled), then
///   pauses the partitions, and resumes at half of both. Hand-outs never depend on fetches.
/// - Offsets: the committed offset of a partition is its lowest unsettled offset (or the next
///   one when all are settled), so a commit never passes an un-acked message.
/// - Rebalance: a revoke first drops what was buffered but not handed out for the revoked
///   partitions, then (the member waits a bounded time for ``revokeDrained``) commits what
///   was acked and forgets the rest. A settlement of a forgotten delivery is counted as late
///   (``Counters/lateSettlements``) and otherwise ignored: the partition's new owner gets the
///   message again.
struct KafkaMemberState: Sendable {
    /// A partition of the topic (0) or of the retry topic (1).
    struct Position: Hashable, Sendable, Comparable {
        var topic: Int
        var partition: Int32

        static func < (a: Position, b: Position) -> Bool { (a.topic, a.partition) < (b.topic, b.partition) }

        /// One word to hash (looked up several times per message).
        func hash(into hasher: inout Hasher) { hasher.combine(topic << 32 | Int(UInt32(bitPattern: partition))) }
    }

    /// A message polled and not yet settled, as it waits in the gate.
    struct Pending: Sendable {
        var envelope: Envelope
        var attempt: Int
        var position: Position
        var offset: Int64
        /// The assignment of `position` the message was polled in.
        var generation: UInt64 = 0
        /// For a message from the retry topic: when it is due (ms since 1970).
        var retryAt: Int64?
        /// What the message counts against ``Limits/bytes``.
        var size: Int { envelope.payload.count + (envelope.key?.utf8.count ?? 0) }
    }

    /// A message handed to a subscription.
    struct Taken: Sendable {
        enum State: Sendable { case handedOut, settling, held }
        var pending: Pending
        var subscription: Int
        var state = State.handedOut
        /// Its partition was revoked before it was settled; its key was freed then.
        var abandoned = false
    }

    /// Where a partition starts when it is assigned.
    struct Start: Sendable, Equatable {
        var offset: Int64
        /// Messages older than this (ms since 1970) are skipped: a timestamp start the broker
        /// could not resolve.
        var skipBefore: Int64?
    }

    /// The buffer bound: polled and not yet settled messages, and their payload bytes.
    struct Limits: Sendable {
        var messages: Int
        var bytes: Int
    }

    /// What happened, for logs, statistics and tests.
    typealias Counters = KafkaConsumerStatistics

    enum Phase: Equatable, Sendable {
        case joining, running, revoking(Set<Position>), closing, closed
    }

    /// What the member does to the fetcher before its next poll.
    enum Flow: Equatable, Sendable { case none, pause, resume }

    /// What a settlement found.
    enum Settlement: Sendable, Equatable {
        /// The message is settled; its key is free.
        case settled
        /// Its partition was revoked meanwhile: nothing to do.
        case late
    }

    /// A partition's offsets. A class, confined to the state (which its member guards with a
    /// lock): mutating a struct inside the dictionary goes through an accessor coroutine
    /// that allocates on every call, and this is touched several times per message. So a copy
    /// of a `KafkaMemberState` shares its tracks: keep one state per member and never mutate
    /// a copy.
    private final class Track: @unchecked Sendable {
        /// Offsets polled, in order, with whether each is settled.
        var inFlight = Deque<(offset: Int64, settled: Bool)>()
        /// The offset after the last one polled (or the start offset).
        var next: Int64
        var committed: Int64
        var skipBefore: Int64?
        var generation: UInt64
        /// The last offset the broker confirmed as committed.
        var confirmed: Int64
        /// The offset after the highest one handed out.
        var handedEnd: Int64
        /// Polled and unsettled messages and their bytes.
        var count = 0
        var bytes = 0

        init(start: Start, generation: UInt64) {
            next = start.offset
            committed = start.offset
            skipBefore = start.skipBefore
            self.generation = generation
            confirmed = start.offset
            handedEnd = start.offset
        }

        var commitOffset: Int64 { inFlight.first?.offset ?? next }

        func handedOut(_ offset: Int64, generation: UInt64) {
            if offset >= handedEnd && generation == self.generation { handedEnd = offset + 1 }
        }

        /// Takes in a polled message and returns the generation it belongs to; `nil` when it
        /// is older than a timestamp start.
        func arrive(_ offset: Int64, size: Int, timestamp: Int64) -> UInt64? {
            next = offset + 1
            if let cut = skipBefore {
                if timestamp >= 0 && timestamp < cut { return nil }
                skipBefore = nil
            }
            inFlight.append((offset, false))
            count += 1
            bytes += size
            return generation
        }

        /// Settles the message at `offset` of `generation`; `false` when the partition has
        /// been assigned anew since (the settlement is late).
        func settle(_ offset: Int64, size: Int, generation: UInt64) -> Bool {
            guard generation == self.generation else { return false }
            count -= 1
            bytes -= size
            var low = 0
            var high = inFlight.count
            while low < high {
                let middle = (low + high) / 2
                if inFlight[middle].offset < offset { low = middle + 1 } else { high = middle }
            }
            guard low < inFlight.count, inFlight[low].offset == offset else { return true }
            inFlight[low].settled = true
            while let first = inFlight.first, first.settled { inFlight.removeFirst() }
            return true
        }
    }

    private(set) var phase = Phase.joining
    /// Whether the member has had an assignment (it has joined the group).
    private(set) var joined = false
    var limits: Limits
    private(set) var counters = Counters()
    /// Whether the member has paused its partitions for back-pressure.
    private(set) var paused = false
    /// Polled and unsettled messages, over every partition.
    private(set) var buffered = 0
    private(set) var bufferedBytes = 0

    private var gate = KeyOrderGate<Pending> { $0.envelope.key }
    private var taken: [UInt64: Taken] = [:]
    private var nextTag: UInt64 = 0
    private var tracks: [Position: Track] = [:]
    private var nextGeneration: UInt64 = 0

    init(limits: Limits) {
        self.limits = limits
    }

    /// Whether the group is rebalancing (the broker refused a commit for it): nothing new is
    /// handed out until the rebalance callback, so that less is left uncommitted if the
    /// partitions move.
    private(set) var rebalancing = false

    /// Whether deliveries may be handed out.
    var isRunning: Bool {
        switch phase {
        case .running, .revoking: !rebalancing
        default: false
        }
    }

    /// The broker refused a commit because the group is rebalancing.
    mutating func rebalanceStarted() {
        if !rebalancing { counters.rebalanceHolds += 1 }
        rebalancing = true
    }

    /// The rebalance is over for this member (a rebalance callback, or a commit accepted).
    mutating func rebalanceEnded() {
        rebalancing = false
    }

    var isClosing: Bool { phase == .closing || phase == .closed }

    /// The partitions currently assigned.
    var assigned: [Position] { tracks.keys.sorted() }

    /// How many deliveries are handed out and unsettled.
    var handedOut: Int { taken.count }

    // MARK: Assignment

    /// Partitions were assigned (all of them, or more of them with the cooperative protocol):
    /// each starts at its offset with a fresh generation.
    ///
    /// A partition assigned again without a revoke first starts over as if revoked: its
    /// waiting messages go (they are read again from `start`) and the keys of its deliveries
    /// in flight are freed, for their late settlements cannot free them.
    mutating func assign(_ starts: [Position: Start]) {
        guard !isClosing else { return }
        let reassigned = Set(starts.keys).intersection(tracks.keys)
        if !reassigned.isEmpty { abandon(reassigned) }
        nextGeneration += 1
        for (position, start) in starts {
            tracks[position] = Track(start: start, generation: nextGeneration)
        }
        if phase == .joining || phase == .running { phase = .running }
        joined = true
    }

    /// A revoke began: buffered messages of `positions` that nobody has seen are dropped and
    /// no more of them are handed out. The member then waits (bounded) for ``revokeDrained``
    /// and calls ``finishRevoke(_:)``.
    mutating func beginRevoke(_ positions: Set<Position>) {
        counters.revokes += 1
        let revoked = positions.intersection(tracks.keys)
        let dropped = gate.remove { revoked.contains($0.position) }
        counters.droppedOnRevoke += dropped.count
        if phase == .running || phase == .joining { phase = .revoking(revoked) }
    }

    /// Whether every delivery handed out from the partitions being revoked is settled.
    var revokeDrained: Bool {
        guard case .revoking(let positions) = phase else { return true }
        return !taken.values.contains { $0.state != .held && positions.contains($0.pending.position) && isCurrent($0.pending) }
    }

    /// Ends a revoke: returns the offsets to commit for `positions` (those that moved, or all
    /// with `force`), forgets the partitions and frees the keys of their unsettled deliveries.
    mutating func finishRevoke(_ positions: Set<Position>, force: Bool = false) -> (offsets: [(Position, Int64)], exposed: Int) {
        var offsets: [(Position, Int64)] = []
        var exposed = 0
        for position in positions.sorted() {
            guard let track = tracks[position] else { continue }
            if force || track.commitOffset > track.committed { offsets.append((position, track.commitOffset)) }
            exposed += Int(max(0, track.handedEnd - track.confirmed))
        }
        abandon(positions)
        if case .revoking = phase { phase = tracks.isEmpty ? .joining : .running }
        if tracks.isEmpty && !isClosing { paused = false }
        return (offsets, exposed)
    }

    /// The broker confirmed `offset` as the committed offset of `position`.
    mutating func confirm(_ position: Position, _ offset: Int64) {
        guard offset >= 0, let track = tracks[position], offset > track.confirmed else { return }
        track.confirmed = offset
    }

    /// The revoke's own commit was refused: what was handed out beyond the last confirmed
    /// commit of the revoked partitions (`exposed`, from ``finishRevoke(_:force:)``) may be
    /// delivered again by their next owner.
    mutating func revokeCommitRefused(exposed: Int) {
        counters.exposedOnRevoke += exposed
    }

    /// Forgets `positions`: their tracks and waiting messages go, and the keys of their
    /// deliveries in flight are freed. Those deliveries stay known, so that a late settlement
    /// is counted, not refused; a held nack is forgotten (its timer finds nothing to redeliver).
    private mutating func abandon(_ positions: Set<Position>) {
        for position in positions {
            if let track = tracks.removeValue(forKey: position) { forget(track) }
        }
        for (tag, taken) in taken where !taken.abandoned && positions.contains(taken.pending.position) && !isCurrent(taken.pending) {
            if taken.state == .held {
                self.taken[tag] = nil
            } else {
                self.taken[tag]!.abandoned = true
                counters.abandonedOnRevoke += 1
            }
            gate.release(key: taken.pending.envelope.key)
        }
        _ = gate.remove { positions.contains($0.position) }
    }

    private mutating func forget(_ track: Track) {
        buffered -= track.count
        bufferedBytes -= track.bytes
    }

    private func isCurrent(_ pending: Pending) -> Bool {
        tracks[pending.position]?.generation == pending.generation
    }

    /// Whether `pending` may wait in the gate: its assignment is current, not being revoked,
    /// and the member is not closing.
    private func accepts(_ pending: Pending) -> Bool {
        guard isCurrent(pending), !isClosing else { return false }
        if case .revoking(let positions) = phase, positions.contains(pending.position) { return false }
        return true
    }

    // MARK: Polling

    /// What the member does before its next poll, and how many messages that poll may take.
    mutating func flow() -> (Flow, capacity: Int) {
        guard !tracks.isEmpty else { return (.none, limits.messages) }
        let full = buffered >= limits.messages || bufferedBytes >= limits.bytes
        let drained = buffered <= limits.messages / 2 && bufferedBytes <= limits.bytes / 2
        if !paused && full {
            paused = true
            counters.pauses += 1
            return (.pause, 0)
        }
        if paused && drained {
            paused = false
            counters.resumes += 1
            return (.resume, limits.messages - buffered)
        }
        return (.none, paused ? 0 : max(0, limits.messages - buffered))
    }

    /// Whether a settlement has made room for a paused member to resume.
    var shouldResume: Bool {
        paused && buffered <= limits.messages / 2 && bufferedBytes <= limits.bytes / 2
    }

    /// What became of a polled message.
    enum Arrival: Sendable {
        /// Waiting in the gate.
        case queued
        /// A retry not yet due: the member hands it to ``release(_:)`` when it is.
        case later(Pending)
        /// Not for this member (a revoked partition) or older than a timestamp start.
        case skipped
    }

    /// Takes a polled message into the buffer.
    mutating func arrive(_ message: consuming Pending, timestamp: Int64, now: Int64) -> Arrival {
        guard !isClosing else { return .skipped }
        if case .revoking(let positions) = phase, positions.contains(message.position) { return .skipped }
        let size = message.size
        guard let track = tracks[message.position], let generation = track.arrive(message.offset, size: size, timestamp: timestamp) else {
            return .skipped
        }
        var pending = consume message
        pending.generation = generation
        buffered += 1
        bufferedBytes += size
        if let due = pending.retryAt, due > now { return .later(pending) }
        gate.append(pending)
        return .queued
    }

    /// A retry that waited in memory is due: it joins the gate (unless its partition went).
    mutating func release(_ pending: Pending) -> Bool {
        guard accepts(pending) else { return false }
        gate.append(pending)
        return true
    }

    // MARK: Hand-out and settlement

    /// The next message for `subscription`, with its tag; `nil` when none can go now.
    mutating func handOut(to subscription: Int) -> (tag: UInt64, pending: Pending)? {
        guard isRunning, let pending = gate.next() else { return nil }
        tracks[pending.position]?.handedOut(pending.offset, generation: pending.generation)
        nextTag += 1
        taken[nextTag] = Taken(pending: pending, subscription: subscription)
        return (nextTag, pending)
    }

    /// Settles `tag` (an ack).
    mutating func ack(_ tag: UInt64) throws(CourierError) -> Settlement {
        guard let taken = taken.removeValue(forKey: tag) else { throw CourierError.alreadySettled(deliveryTag: tag) }
        guard taken.state == .handedOut else {
            self.taken[tag] = taken
            throw CourierError.alreadySettled(deliveryTag: tag)
        }
        return settle(taken.pending)
    }

    /// Starts settling `tag` by other means (republishing it to a retry or dead-letter topic,
    /// or a nack): the delivery can no longer be acked; finish with ``complete(_:)``,
    /// ``restore(_:)``, ``hold(_:)`` or ``redeliver(_:_:)``. `nil` when its partition was
    /// revoked meanwhile (counted late: nothing to do).
    mutating func begin(_ tag: UInt64) throws(CourierError) -> Pending? {
        guard let taken = taken[tag], taken.state == .handedOut else { throw CourierError.alreadySettled(deliveryTag: tag) }
        guard isCurrent(taken.pending) else {
            self.taken[tag] = nil
            counters.lateSettlements += 1
            return nil
        }
        self.taken[tag]!.state = .settling
        return taken.pending
    }

    /// The republish of `tag` is confirmed: it is settled.
    @discardableResult
    mutating func complete(_ tag: UInt64) -> Settlement {
        guard let taken = taken.removeValue(forKey: tag) else { return .late }
        return settle(taken.pending)
    }

    /// The republish of `tag` failed: the delivery can be settled again.
    mutating func restore(_ tag: UInt64) {
        if taken[tag] != nil { taken[tag]!.state = .handedOut }
    }

    /// `tag` was nacked with a delay: it waits outside the gate, its key still busy, until
    /// ``redeliver(_:_:)``. A revoke meanwhile forgets it.
    mutating func hold(_ tag: UInt64) {
        if taken[tag] != nil { taken[tag]!.state = .held }
    }

    /// A nacked delivery goes back to the front of its key as `pending` (its next attempt).
    /// `false` when its partition was revoked or is being revoked (then its key is freed and
    /// the message left to the partition's next owner).
    @discardableResult
    mutating func redeliver(_ tag: UInt64, _ pending: Pending) -> Bool {
        guard taken.removeValue(forKey: tag) != nil else { return false }
        if accepts(pending) {
            gate.returnToFront(pending)
            return true
        }
        if isCurrent(pending) { gate.release(key: pending.envelope.key) }
        return false
    }

    /// A subscription left: its deliveries not being settled go back to the front for the
    /// others.
    mutating func detach(subscription: Int) {
        let returned = taken.filter { $0.value.subscription == subscription && $0.value.state == .handedOut }.sorted { $0.key > $1.key }
        for (tag, taken) in returned { redeliver(tag, taken.pending) }
    }

    /// Marks a message settled: its offset may be committed, its key is free.
    private mutating func settle(_ pending: Pending) -> Settlement {
        let size = pending.size
        guard tracks[pending.position]?.settle(pending.offset, size: size, generation: pending.generation) == true else {
            counters.lateSettlements += 1
            return .late
        }
        buffered -= 1
        bufferedBytes -= size
        gate.release(key: pending.envelope.key)
        return .settled
    }

    // MARK: Commits and closing

    /// The lowest unsettled offset of every partition that moved since its last commit (all
    /// with `force`), marked committed.
    mutating func commits(force: Bool) -> [(Position, Int64)] {
        var offsets: [(Position, Int64)] = []
        for (position, track) in tracks where force || track.commitOffset > track.committed {
            offsets.append((position, track.commitOffset))
            track.committed = track.commitOffset
        }
        return offsets.sorted { $0.0 < $1.0 }
    }

    /// The member is leaving the group: nothing more is handed out or taken in.
    mutating func beginClose() {
        if phase != .closed { phase = .closing }
    }

    /// The member has left: everything is forgotten.
    mutating func finishClose() {
        phase = .closed
        tracks.removeAll()
        taken.removeAll()
        _ = gate.removeAll(forgetInFlight: true)
        buffered = 0
        bufferedBytes = 0
        paused = false
    }
}

/// What the consumer-group members of a ``KafkaTransport`` did so far
/// (``KafkaTransport/consumerStatistics``): how often back-pressure paused fetching, and what
/// rebalances cost.
public struct KafkaConsumerStatistics: Sendable, Equatable, CustomStringConvertible {
    /// Times a member paused its partitions because its buffer was full.
    public var pauses = 0
    /// Times a member resumed them.
    public var resumes = 0
    /// Revokes (rebalances that took partitions away, and closes).
    public var revokes = 0
    /// Times hand-outs were held because the broker refused a commit for a rebalance.
    public var rebalanceHolds = 0
    /// Settlements of deliveries whose partition had been revoked: ignored, because the
    /// partition's new owner gets the message again.
    public var lateSettlements = 0
    /// Buffered messages a revoke dropped before any subscription saw them.
    public var droppedOnRevoke = 0
    /// Handed-out deliveries still unsettled when a revoke gave their partition up (after the
    /// revoke timeout): their next owner delivers them again.
    public var abandonedOnRevoke = 0
    /// Deliveries handed out beyond the last commit the broker confirmed, in partitions whose
    /// commit on revoke the broker refused (a broker that refuses commits while a group
    /// rebalances, such as librdkafka's mock cluster): their next owner may deliver them
    /// again. With a broker that takes commits during a rebalance (Apache Kafka), 0.
    public var exposedOnRevoke = 0

    public init() {}

    /// The sum of two statistics.
    public static func + (a: Self, b: Self) -> Self {
        var sum = a
        sum.pauses += b.pauses
        sum.resumes += b.resumes
        sum.revokes += b.revokes
        sum.rebalanceHolds += b.rebalanceHolds
        sum.lateSettlements += b.lateSettlements
        sum.droppedOnRevoke += b.droppedOnRevoke
        sum.abandonedOnRevoke += b.abandonedOnRevoke
        sum.exposedOnRevoke += b.exposedOnRevoke
        return sum
    }

    public var description: String {
        "pauses \(pauses), resumes \(resumes), revokes \(revokes), rebalance holds \(rebalanceHolds), dropped on revoke \(droppedOnRevoke), abandoned on revoke \(abandonedOnRevoke), exposed by refused revoke commits \(exposedOnRevoke), late settlements \(lateSettlements)"
    }
}
