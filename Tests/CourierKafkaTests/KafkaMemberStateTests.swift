import Courier
import Testing

@testable import CourierKafka

/// The consumer-group member's state machine, without librdkafka: flow, offsets, rebalances.
@Suite struct KafkaMemberStateTests {
    typealias Position = KafkaMemberState.Position
    static let p0 = Position(topic: 0, partition: 0)
    static let p1 = Position(topic: 0, partition: 1)
    static let retry0 = Position(topic: 1, partition: 0)

    /// A machine with `positions` assigned from offset 0.
    func machine(_ positions: [Position] = [p0], messages: Int = 100, bytes: Int = 1 << 20) -> KafkaMemberState {
        var machine = KafkaMemberState(limits: .init(messages: messages, bytes: bytes))
        machine.assign(Dictionary(uniqueKeysWithValues: positions.map { ($0, KafkaMemberState.Start(offset: 0)) }))
        return machine
    }

    func message(_ position: Position, _ offset: Int64, key: String? = nil, size: Int = 1, retryAt: Int64? = nil)
        -> KafkaMemberState.Pending
    {
        KafkaMemberState.Pending(
            envelope: Envelope(payload: Array(repeating: 0, count: size), key: key), attempt: 1, position: position, offset: offset,
            retryAt: retryAt
        )
    }

    func arrive(_ machine: inout KafkaMemberState, _ messages: [KafkaMemberState.Pending]) {
        for message in messages { _ = machine.arrive(message, timestamp: 0, now: 0) }
    }

    func take(_ machine: inout KafkaMemberState, _ subscription: Int = 1) throws -> (tag: UInt64, pending: KafkaMemberState.Pending) {
        let handed = machine.handOut(to: subscription)
        return try #require(handed)
    }

    func nothing(_ machine: inout KafkaMemberState) -> Bool {
        machine.handOut(to: 1) == nil
    }

    func commits(_ machine: inout KafkaMemberState, force: Bool = false) -> [Int64] {
        machine.commits(force: force).map(\.1)
    }

    @Test func aBacklogHandledOneAtATimeNeverPauses() throws {
        var machine = machine(messages: 100)
        var fetched: Int64 = 0
        for expected in 0..<Int64(1_000) {
            // The fetcher takes what the buffer has room for; the handler takes one at a time.
            let (flow, capacity) = machine.flow()
            #expect(flow == .none)
            for _ in 0..<min(capacity, 7) where fetched < 1_000 {
                arrive(&machine, [message(Self.p0, fetched)])
                fetched += 1
            }
            let (tag, pending) = try take(&machine)
            #expect(pending.offset == expected)
            _ = try machine.ack(tag)
        }
        #expect(machine.counters.pauses == 0)
        #expect(commits(&machine, force: false) == [1_000])
    }

    @Test func pausesWhenTheBufferIsFullAndResumesAtHalf() throws {
        var machine = machine(messages: 4)
        arrive(&machine, (0..<4).map { message(Self.p0, $0) })
        var flow = machine.flow()
        #expect(flow == (.pause, 0))
        flow = machine.flow()
        #expect(flow == (.none, 0))
        var tags: [UInt64] = []
        for _ in 0..<4 { tags.append(try take(&machine).tag) }
        #expect(tags.count == 4, "hand-outs do not depend on fetching")
        _ = try machine.ack(tags[0])
        #expect(!machine.shouldResume)
        _ = try machine.ack(tags[1])
        #expect(machine.shouldResume)
        flow = machine.flow()
        #expect(flow == (.resume, 2))
        #expect(machine.counters.pauses == 1 && machine.counters.resumes == 1)
    }

    @Test func bytesBoundTheBufferToo() {
        var machine = machine(messages: 1_000, bytes: 1_000)
        arrive(&machine, [message(Self.p0, 0, size: 600), message(Self.p0, 1, size: 600)])
        #expect(machine.bufferedBytes == 1_200)
        let flow = machine.flow()
        #expect(flow.0 == .pause)
    }

    @Test func commitsStopAtTheFirstUnsettledOffset() throws {
        var machine = machine()
        arrive(&machine, (0..<5).map { message(Self.p0, $0) })
        var tags: [UInt64] = []
        for _ in 0..<5 { tags.append(try take(&machine).tag) }
        for index in [0, 1, 3] { _ = try machine.ack(tags[index]) }
        #expect(commits(&machine, force: false) == [2])
        #expect(commits(&machine).isEmpty, "nothing moved")
        _ = try machine.ack(tags[2])
        #expect(commits(&machine, force: false) == [4])
        _ = try machine.ack(tags[4])
        #expect(commits(&machine, force: false) == [5])
        #expect(commits(&machine, force: true) == [5])
    }

    @Test func revokeDropsTheUnseenWaitsForInFlightAndCommitsWhatWasAcked() throws {
        var machine = machine()
        arrive(&machine, (0..<6).map { message(Self.p0, $0) })
        let first = try take(&machine).tag
        let second = try take(&machine).tag
        machine.beginRevoke([Self.p0])
        #expect(machine.counters.droppedOnRevoke == 4)
        #expect(nothing(&machine), "nothing more of a partition being revoked")
        #expect(!machine.revokeDrained)
        _ = try machine.ack(first)
        #expect(!machine.revokeDrained)
        _ = try machine.ack(second)
        #expect(machine.revokeDrained)
        let offsets = machine.finishRevoke([Self.p0]).offsets.map(\.1)
        #expect(offsets == [2])
        #expect(machine.counters.abandonedOnRevoke == 0)
        #expect(machine.buffered == 0 && machine.assigned.isEmpty)
        #expect(machine.phase == .joining)
    }

    @Test func anAckAfterTheRevokeIsCountedNotRefused() throws {
        var machine = machine()
        arrive(&machine, [message(Self.p0, 0, key: "k"), message(Self.p0, 1, key: "k")])
        let tag = try take(&machine).tag
        machine.beginRevoke([Self.p0])
        let offsets = machine.finishRevoke([Self.p0], force: true).offsets.map(\.1)
        #expect(offsets == [0], "the unsettled offset is not passed")
        #expect(machine.counters.abandonedOnRevoke == 1)
        // The partition comes back (a new generation); the old delivery's ack is late.
        machine.assign([Self.p0: .init(offset: 0)])
        arrive(&machine, [message(Self.p0, 0, key: "k")])
        let late = try machine.ack(tag)
        #expect(late == .late)
        #expect(machine.counters.lateSettlements == 1)
        #expect(throws: CourierError.self) {
            var copy = machine; _ = try copy.ack(tag)
        }
        // The key was freed by the revoke: the redelivered message goes out.
        let again = try take(&machine)
        #expect(again.pending.offset == 0)
        let settled = try machine.ack(again.tag)
        #expect(settled == .settled)
        #expect(commits(&machine, force: false) == [1])
    }

    @Test func aPartialRevokeLeavesTheOtherPartitionsRunning() throws {
        var machine = machine([Self.p0, Self.p1])
        arrive(&machine, [message(Self.p0, 0, key: "a"), message(Self.p1, 0, key: "b"), message(Self.p1, 1, key: "c")])
        let a = try take(&machine)
        #expect(a.pending.position == Self.p0)
        machine.beginRevoke([Self.p0])
        let b = try take(&machine)
        #expect(b.pending.position == Self.p1)
        _ = try machine.ack(a.tag)
        #expect(machine.revokeDrained, "only p0's deliveries are waited for")
        let offsets = machine.finishRevoke([Self.p0]).offsets.map(\.1)
        #expect(offsets == [1])
        #expect(machine.phase == .running && machine.assigned == [Self.p1])
        #expect(try take(&machine).pending.offset == 1)
        let settled = try machine.ack(b.tag)
        #expect(settled == .settled)
    }

    @Test func aRevokeFreesTheKeyOfAnAbandonedDelivery() throws {
        // The key's message from the retry topic waits behind the one from the topic.
        var machine = machine([Self.p0, Self.retry0])
        arrive(&machine, [message(Self.p0, 0, key: "k"), message(Self.retry0, 0, key: "k")])
        let first = try take(&machine)
        #expect(nothing(&machine), "same key: held back")
        machine.beginRevoke([Self.p0])
        _ = machine.finishRevoke([Self.p0])
        #expect(machine.counters.abandonedOnRevoke == 1)
        #expect(try take(&machine).pending.position == Self.retry0)
        let late = try machine.ack(first.tag)
        #expect(late == .late)
    }

    /// librdkafka assigns a partition the member still has (no revoke between): its waiting
    /// messages go, the key of its delivery in flight is freed, and the messages read again
    /// from the new start flow (before, the key stayed busy for good: its late ack could not
    /// free it, and every later message of the key waited forever).
    @Test func aPartitionAssignedAgainWithoutARevokeStartsOver() throws {
        var machine = machine()
        arrive(&machine, [message(Self.p0, 0, key: "k"), message(Self.p0, 1, key: "k"), message(Self.p0, 2)])
        let first = try take(&machine)
        machine.assign([Self.p0: .init(offset: 0)])
        #expect(nothing(&machine), "what waited went with the old assignment")
        arrive(&machine, [message(Self.p0, 0, key: "k"), message(Self.p0, 1, key: "k")])
        let again = try take(&machine)
        #expect(again.pending.offset == 0)
        #expect(try machine.ack(first.tag) == .late)
        #expect(nothing(&machine), "offset 1 waits for offset 0 of the same key, not for the late one")
        #expect(try machine.ack(again.tag) == .settled)
        #expect(try take(&machine).pending.offset == 1)
        #expect(machine.counters.abandonedOnRevoke == 1)
    }

    @Test func aHeldNackDoesNotHoldUpARevokeAndIsForgotten() throws {
        var machine = machine()
        arrive(&machine, [message(Self.p0, 0, key: "k")])
        let taken = try take(&machine)
        let begun = try machine.begin(taken.tag)
        let pending = try #require(begun)
        machine.hold(taken.tag)
        machine.beginRevoke([Self.p0])
        #expect(machine.revokeDrained)
        _ = machine.finishRevoke([Self.p0])
        var again = pending
        again.attempt += 1
        let redelivered = machine.redeliver(taken.tag, again)
        #expect(!redelivered, "its timer finds nothing to redeliver")
        #expect(machine.counters.abandonedOnRevoke == 0)
    }

    @Test func aNackDuringTheRevokeFreesItsKeyAndIsNotHandedOutAgain() throws {
        var machine = machine()
        arrive(&machine, [message(Self.p0, 0, key: "k")])
        let taken = try take(&machine)
        machine.beginRevoke([Self.p0])
        let begun = try machine.begin(taken.tag)
        let pending = try #require(begun)
        let redelivered = machine.redeliver(taken.tag, pending)
        #expect(!redelivered)
        #expect(machine.revokeDrained)
        let offsets = machine.finishRevoke([Self.p0], force: true).offsets.map(\.1)
        #expect(offsets == [0])
    }

    @Test func aFailedRepublishCanBeSettledAgain() throws {
        var machine = machine()
        arrive(&machine, [message(Self.p0, 0)])
        let taken = try take(&machine)
        _ = try machine.begin(taken.tag)
        #expect(throws: CourierError.self) {
            var copy = machine; _ = try copy.ack(taken.tag)
        }
        machine.restore(taken.tag)
        _ = try machine.begin(taken.tag)
        let settled = machine.complete(taken.tag)
        #expect(settled == .settled)
        #expect(commits(&machine, force: false) == [1])
    }

    @Test func aRetryWaitsUntilDueAndADetachReturnsDeliveries() throws {
        var machine = machine()
        let arrival = machine.arrive(message(Self.p0, 0, retryAt: 2_000), timestamp: 0, now: 1_000)
        #expect(arrival.isLater)
        #expect(nothing(&machine))
        let released = machine.release(message(Self.p0, 0, retryAt: 2_000).withGeneration(1))
        #expect(released)
        let taken = try take(&machine)
        machine.detach(subscription: 1)
        #expect(try take(&machine, 2).pending.offset == taken.pending.offset)
    }

    @Test func closingDuringAJoinHandsOutNothing() {
        var machine = KafkaMemberState(limits: .init(messages: 10, bytes: 1_000))
        #expect(machine.phase == .joining && !machine.joined)
        machine.beginClose()
        machine.assign([Self.p0: .init(offset: 0)])
        #expect(!machine.joined && machine.isClosing)
        let arrival = machine.arrive(message(Self.p0, 0), timestamp: 0, now: 0)
        #expect(arrival.isSkipped)
        #expect(nothing(&machine))
        machine.finishClose()
        #expect(machine.phase == .closed)
    }

    @Test func aTimestampStartSkipsOlderMessages() {
        var machine = KafkaMemberState(limits: .init(messages: 10, bytes: 1_000))
        machine.assign([Self.p0: .init(offset: 0, skipBefore: 500)])
        let old = machine.arrive(message(Self.p0, 0), timestamp: 100, now: 0)
        #expect(old.isSkipped)
        let new = machine.arrive(message(Self.p0, 1), timestamp: 600, now: 0)
        #expect(!new.isSkipped && !new.isLater)
        #expect(commits(&machine) == [1], "the skipped offset is passed")
    }
}

extension KafkaMemberState.Arrival {
    var isLater: Bool { if case .later = self { true } else { false } }
    var isSkipped: Bool { if case .skipped = self { true } else { false } }
}

extension KafkaMemberState.Pending {
    func withGeneration(_ generation: UInt64) -> Self {
        var copy = self
        copy.generation = generation
        return copy
    }
}
