import Testing

@testable import CourierKafka

/// The producer's state machine, without librdkafka: handles only while they exist, no
/// produce after a close began, the closer waiting for callers, one closer.
@Suite struct KafkaProducerStateMachineTests {
    typealias Machine = KafkaProducerStateMachine<String, String>

    /// Acquires `topic`, returning the handles or nil when refused, counting topic handles made.
    func acquire(_ machine: inout Machine, _ topic: String, made: inout Int) -> (String, String)? {
        let decision = machine.acquire(topic: topic) { client, name in
            made += 1
            return "\(client)/\(name)"
        }
        guard case .produce(let client, let handle) = decision else { return nil }
        return (client, handle)
    }

    @Test func topicHandlesAreMadeOnceAndKeptUntilClose() {
        var machine = Machine(client: "rk")
        var made = 0
        #expect(acquire(&machine, "orders", made: &made)! == ("rk", "rk/orders"))
        let released = machine.release()
        #expect(!released)
        #expect(acquire(&machine, "orders", made: &made)! == ("rk", "rk/orders"))
        #expect(acquire(&machine, "billing", made: &made)! == ("rk", "rk/billing"))
        #expect(made == 2)
        let r1 = machine.release()
        #expect(!r1)
        let r2 = machine.release()
        #expect(!r2)
        guard case .flush(let client) = machine.beginClose() else {
            Issue.record("the first close flushes")
            return
        }
        #expect(client == "rk")
        machine.flushed()
        let handles = machine.pollStopped()
        #expect(handles?.client == "rk")
        #expect(handles?.topics.values.sorted() == ["rk/billing", "rk/orders"])
        machine.destroyed()
        #expect(machine.isClosed)
    }

    @Test func nothingIsAcquiredOnceACloseBegan() {
        var machine = Machine(client: "rk")
        var made = 0
        _ = machine.beginClose()
        #expect(!machine.isOpen)
        #expect(acquire(&machine, "orders", made: &made) == nil)
        #expect(made == 0)
        #expect(machine.isIdle)
    }

    @Test func theCloserWaitsForCallersHoldingTheHandles() {
        var machine = Machine(client: "rk")
        var made = 0
        _ = acquire(&machine, "orders", made: &made)
        _ = acquire(&machine, "orders", made: &made)
        guard case .flush = machine.beginClose() else {
            Issue.record("the first close flushes")
            return
        }
        #expect(!machine.isIdle)
        let r3 = machine.release()
        #expect(!r3)  // one still holds them
        let r4 = machine.release()
        #expect(r4)  // the last one: the closer may go on
        #expect(machine.isIdle)
    }

    @Test func handlesAreNotHandedOutWhileACallerHoldsThem() {
        var machine = Machine(client: "rk")
        var made = 0
        _ = acquire(&machine, "orders", made: &made)
        _ = machine.beginClose()
        machine.flushed()
        let early = machine.pollStopped()
        #expect(early == nil)
        let r5 = machine.release()
        #expect(r5)
        let late = machine.pollStopped()
        #expect(late?.client == "rk")
    }

    @Test func pollingGoesOnThroughTheFlushAndStopsAfter() {
        var machine = Machine(client: "rk")
        #expect(machine.shouldPoll)
        _ = machine.beginClose()
        #expect(machine.shouldPoll)  // delivery reports of the flush are served
        machine.flushed()
        #expect(!machine.shouldPoll)
        _ = machine.pollStopped()
        #expect(!machine.shouldPoll)
    }

    @Test func aSecondCloseWaitsAndOneAfterTheEndDoesNothing() {
        var machine = Machine(client: "rk")
        guard case .flush = machine.beginClose() else {
            Issue.record("the first close flushes")
            return
        }
        guard case .wait = machine.beginClose() else {
            Issue.record("a second close waits for the first")
            return
        }
        machine.flushed()
        guard case .wait = machine.beginClose() else {
            Issue.record("a close while stopping waits")
            return
        }
        _ = machine.pollStopped()
        machine.destroyed()
        guard case .none = machine.beginClose() else {
            Issue.record("a close after the end does nothing")
            return
        }
    }

    @Test func eventsOutOfOrderChangeNothing() {
        var machine = Machine(client: "rk")
        machine.flushed()
        #expect(machine.isOpen)
        let handles = machine.pollStopped()
        #expect(handles == nil)
        machine.destroyed()
        #expect(machine.isOpen)
    }
}
