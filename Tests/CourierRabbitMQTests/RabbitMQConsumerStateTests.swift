import Courier
import Testing

@testable import CourierRabbitMQ

/// The RabbitMQ subscription's state, without librabbitmq or a broker: generation-tagged
/// deliveries, per-key order, stale acks after a lost channel, double settlement, close.
@Suite struct RabbitMQConsumerStateTests {
    /// A handed-out delivery: its tag and its key.
    struct Item: Sendable, Equatable {
        let tag: UInt64
        let key: String?
    }

    typealias State = RabbitMQConsumerState<Item>

    func state(ordered: Bool = true) -> State {
        var state = State(ordered: ordered) { $0.key }
        state.opened(channel: 3, connectionGeneration: 1)
        return state
    }

    @discardableResult
    func deliver(_ state: inout State, _ deliveryTag: UInt64, key: String? = nil, attempt: Int = 1) -> UInt64? {
        state.deliver(deliveryTag: deliveryTag, envelope: Envelope(text: "m\(deliveryTag)", key: key), attempt: attempt) {
            Item(tag: $0, key: key)
        }
    }

    @Test func tagsCarryTheChannelGenerationAboveTheBrokerTag() {
        var state = state()
        let tag = deliver(&state, 7)!
        #expect(tag & State.tagMask == 7)
        #expect(tag >> State.tagBits == 1)
        state.opened(channel: 4, connectionGeneration: 2)
        let next = deliver(&state, 7)!
        #expect(next >> State.tagBits == 2)
        #expect(next != tag)
    }

    @Test func aKeyWaitsForItsEarlierDeliveryToBeSettled() {
        var state = state()
        let first = deliver(&state, 1, key: "a")!
        deliver(&state, 2, key: "a")
        deliver(&state, 3, key: "b")
        #expect(state.next()?.tag == first)
        #expect(state.next().map { $0.tag & State.tagMask } == 3)  // b overtakes the waiting a
        #expect(state.next() == nil)
        guard case .current(let settled, let channel, let generation) = state.settle(first) else {
            Issue.record("a delivery of the current channel settles there")
            return
        }
        #expect(settled.envelope.key == "a")
        #expect(channel == 3 && generation == 1)
        #expect(state.next().map { $0.tag & State.tagMask } == 2)
    }

    @Test func unorderedHandsOutWithoutWaiting() {
        var state = state(ordered: false)
        deliver(&state, 1, key: "a")
        deliver(&state, 2, key: "a")
        #expect(state.next() != nil)
        #expect(state.next() != nil)
    }

    @Test func settlingTwiceIsRefused() {
        var state = state()
        let tag = deliver(&state, 1)!
        _ = state.next()
        #expect(state.settle(tag) != nil)
        #expect(state.settle(tag) == nil)
        #expect(state.peek(tag) == nil)
    }

    @Test func afterALostChannelOldTagsAreStaleAndBufferedDeliveriesAreDropped() {
        var state = state()
        let handedOut = deliver(&state, 1, key: "a")!
        let buffered = deliver(&state, 2, key: "a")!
        _ = state.next()
        state.channelLost(CourierError(.unreachable, "connection lost"), final: false) { $0.tag }
        #expect(state.outstanding[buffered] == nil)  // the broker redelivers it
        #expect(!state.closed)
        state.opened(channel: 5, connectionGeneration: 2)
        guard case .stale(let outstanding) = state.settle(handedOut) else {
            Issue.record("an ack of a lost channel is stale: never sent on the new channel")
            return
        }
        #expect(outstanding != nil)
        guard case .stale(nil) = state.settle(buffered) else {
            Issue.record("a dropped delivery of a lost channel is stale too")
            return
        }
        // The key is free again on the new channel: its redelivery is handed out.
        let again = deliver(&state, 1, key: "a")!
        #expect(state.next()?.tag == again)
    }

    @Test func aFinalLossEndsTheSubscriptionWithItsError() {
        var state = state()
        state.channelLost(CourierError(.brokerRejected, "queue deleted"), final: true) { $0.tag }
        #expect(state.closed)
        #expect(state.failure?.code == .brokerRejected)
        #expect(deliver(&state, 1) == nil)

        var closedByShutdown = self.state()
        closedByShutdown.channelLost(CourierError(.transportClosed, "shut down"), final: true) { $0.tag }
        #expect(closedByShutdown.closed)
        #expect(closedByShutdown.failure == nil)
    }

    @Test func closeReturnsTheChannelOnceAndForgetsWhatIsOutstanding() {
        var state = state()
        let tag = deliver(&state, 1)!
        _ = state.next()
        #expect(state.close() == 3)
        #expect(state.close() == nil)
        #expect(state.outstanding.isEmpty)
        #expect(state.settle(tag) == nil)  // the broker has it back
        #expect(deliver(&state, 2) == nil)
    }
}
