import Courier
import Testing

@testable import CourierRabbitMQ

/// The RabbitMQ connection's state machine, without librabbitmq or a broker: connecting,
/// losing the connection with confirms outstanding, backoff, re-declaring, republishing,
/// closing during a reconnect.
@Suite struct AMQPConnectionStateMachineTests {
    /// A stand-in for librabbitmq's connection handle.
    struct Handle: Equatable { let id: Int }

    final class Sink: @unchecked Sendable {
        var failed = false
    }

    struct Publish: AMQPPendingPublish, Equatable {
        let id: String
        var deadline: ContinuousClock.Instant = .now + .seconds(60)
        var sink = Sink()
        var isSettled: Bool { sink.failed }
        static func == (a: Publish, b: Publish) -> Bool { a.id == b.id }
    }

    typealias Machine = AMQPConnectionStateMachine<Handle, Publish>

    /// A machine connected on `handle` with its publishing channel open.
    static func connected(_ handle: Int = 1) -> Machine {
        var machine = Machine()
        machine.connected(Handle(id: handle))
        machine.publisherOpened()
        return machine
    }

    /// Publishes `ids` as far as the machine lets them go; the ids that were sent.
    @discardableResult
    static func publish(_ ids: [String], on machine: inout Machine) -> [String] {
        var sent: [String] = []
        for id in ids {
            let publish = Publish(id: id)
            if case .send = machine.publish(publish) {
                machine.sent(publish)
                sent.append(id)
            }
        }
        return sent
    }

    @Test func connectingOpensAGenerationAndPublishesWaitForThePublishingChannel() {
        var machine = Machine()
        #expect(machine.handle == nil)
        machine.connected(Handle(id: 7))
        #expect(machine.handle == Handle(id: 7))
        #expect(machine.generation == 1)
        guard case .held = machine.publish(Publish(id: "early")) else { Issue.record("sent before confirm mode"); return }
        machine.publisherOpened()
        #expect(machine.republishable().map(\.id) == ["early"])
        guard case .send(let handle) = machine.publish(Publish(id: "now")) else { Issue.record("not sent when ready"); return }
        #expect(handle == Handle(id: 7))
    }

    @Test func confirmsSettleByTagSingleAndMultiple() {
        var machine = Self.connected()
        Self.publish(["a", "b", "c", "d"], on: &machine)
        #expect(machine.confirm(upTo: 2, multiple: false).map(\.id) == ["b"])
        #expect(machine.confirm(upTo: 3, multiple: true).map(\.id) == ["a", "c"])
        #expect(machine.confirm(upTo: 3, multiple: true).isEmpty, "a confirm settles once")
        #expect(machine.unconfirmedCount == 1)
    }

    @Test func losingTheConnectionWithConfirmsOutstandingRepublishesThemInOrderAfterTheReconnect() {
        var machine = Self.connected(1)
        Self.publish(["a", "b", "c"], on: &machine)
        _ = machine.confirm(upTo: 1, multiple: true)
        #expect(machine.lost() == Handle(id: 1), "the broken handle is handed back to destroy")
        #expect(machine.handle == nil)
        #expect(machine.reconnectAttempt == 1)
        guard case .held = machine.publish(Publish(id: "d")) else { Issue.record("sent while disconnected"); return }
        #expect(machine.republishable().isEmpty, "nothing goes out before the publishing channel is open")

        machine.connected(Handle(id: 2))
        #expect(machine.generation == 2)
        machine.publisherOpened()
        let again = machine.republishable()
        #expect(again.map(\.id) == ["b", "c", "d"])
        for publish in again { machine.sent(publish) }
        // Tags start again from 1 on the new channel.
        #expect(machine.confirm(upTo: 1, multiple: false).map(\.id) == ["b"])
        #expect(machine.confirm(upTo: 3, multiple: true).map(\.id) == ["c", "d"])
    }

    @Test func aPublishWhoseCallerAlreadyFailedIsNotRepublished() {
        var machine = Self.connected()
        let doomed = Publish(id: "doomed")
        machine.sent(doomed)
        Self.publish(["kept"], on: &machine)
        doomed.sink.failed = true
        _ = machine.lost()
        machine.connected(Handle(id: 2))
        machine.publisherOpened()
        #expect(machine.republishable().map(\.id) == ["kept"])
    }

    @Test func reconnectsBackOffExponentiallyWithJitterUpToTheMaximum() {
        var machine = Self.connected()
        _ = machine.lost()
        var delays: [Duration] = []
        for _ in 0..<10 { delays.append(machine.reconnectFailed(random: 1).delay) }
        #expect(
            delays.prefix(7) == [
                .milliseconds(100), .milliseconds(200), .milliseconds(400), .milliseconds(800), .milliseconds(1600), .milliseconds(3200),
                .seconds(5),
            ])
        #expect(delays.suffix(3).allSatisfy { $0 == .seconds(5) })
        #expect(machine.reconnectAttempt == 11)
        #expect(machine.reconnectFailed(random: 0).delay == .milliseconds(2500), "jitter takes off at most half")
        // A reconnect that got as far as a connection hands it back to destroy.
        machine.connected(Handle(id: 3))
        #expect(machine.reconnectFailed(random: 1).handle == Handle(id: 3))
    }

    @Test func declarationsAreMadeAgainOnEveryNewConnection() {
        var machine = Self.connected()
        #expect(machine.needsDeclaration("queue billing"))
        machine.declared("queue billing")
        #expect(!machine.needsDeclaration("queue billing"))
        _ = machine.lost()
        #expect(machine.needsDeclaration("queue billing"), "a restarted broker may have lost it")
        machine.connected(Handle(id: 2))
        machine.declared("queue billing")
        machine.forgetDeclarations()
        #expect(machine.needsDeclaration("queue billing"), "a deleted queue is declared again")
    }

    @Test func closingDuringAReconnectRefusesPublishesAndFailsWhatWaits() {
        var machine = Self.connected()
        Self.publish(["a"], on: &machine)
        _ = machine.lost()
        _ = machine.publish(Publish(id: "b"))
        machine.stop()
        #expect(machine.isClosing)
        #expect(machine.reconnectAttempt == nil, "no more reconnects")
        guard case .refuse = machine.publish(Publish(id: "c")) else { Issue.record("accepted while closing"); return }
        let (handle, unconfirmed) = machine.finish()
        #expect(handle == nil)
        #expect(unconfirmed.map(\.id) == ["a", "b"], "every unconfirmed publish is failed, none lost silently")
    }

    @Test func closingWhileConnectedKeepsTheHandleToCloseIt() {
        var machine = Self.connected(4)
        machine.stop()
        #expect(machine.handle == Handle(id: 4))
        #expect(machine.finish().handle == Handle(id: 4))
        #expect(machine.handle == nil)
    }

    @Test func overdueConfirmsExpireAndSettledOnesAreDropped() {
        var machine = Self.connected()
        let now = ContinuousClock.now
        let late = Publish(id: "late", deadline: now - .seconds(1))
        let settled = Publish(id: "settled", deadline: now + .seconds(60))
        settled.sink.failed = true
        let fresh = Publish(id: "fresh", deadline: now + .seconds(60))
        for publish in [late, settled, fresh] { machine.sent(publish) }
        #expect(machine.expire(now: now).map(\.id) == ["late"])
        #expect(machine.unconfirmedCount == 1)
        #expect(machine.expire(now: now).isEmpty, "nothing overdue at the front")
    }
}
