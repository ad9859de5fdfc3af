import Courier
import Testing

@Suite("KeyOrderGate")
struct KeyOrderGateTests {
    private struct Item: Sendable, Equatable {
        var name: String
        var key: String?
    }

    private func gate(ordered: Bool = true) -> KeyOrderGate<Item> {
        KeyOrderGate(ordered: ordered) { $0.key }
    }

    @Test func aKeyInFlightHoldsBackItsLaterItemsButNotOthers() {
        var gate = gate()
        for item in [Item(name: "a1", key: "a"), Item(name: "a2", key: "a"), Item(name: "b1", key: "b"), Item(name: "x", key: nil)] {
            gate.append(item)
        }
        #expect(gate.next()?.name == "a1")
        #expect(gate.next()?.name == "b1", "a2 waits for a1")
        #expect(gate.next()?.name == "x")
        #expect(gate.next() == nil)
        #expect(gate.count == 1)
        gate.release(key: "a")
        #expect(gate.next()?.name == "a2")
    }

    @Test func aReturnedItemComesBeforeTheHeldBackItemsOfItsKey() {
        var gate = gate()
        gate.append(Item(name: "a1", key: "a"))
        gate.append(Item(name: "a2", key: "a"))
        let first = gate.next()!
        #expect(gate.next() == nil)
        gate.returnToFront(first)
        #expect(gate.next()?.name == "a1")
        gate.release(key: "a")
        #expect(gate.next()?.name == "a2")
    }

    @Test func unorderedGatesAreFIFO() {
        var gate = gate(ordered: false)
        gate.append(Item(name: "a1", key: "a"))
        gate.append(Item(name: "a2", key: "a"))
        #expect(gate.next()?.name == "a1")
        #expect(gate.next()?.name == "a2")
    }

    @Test func removeAllReturnsHeldBackItemsToo() {
        var gate = gate()
        gate.append(Item(name: "a1", key: "a"))
        gate.append(Item(name: "a2", key: "a"))
        _ = gate.next()
        _ = gate.next()
        #expect(gate.removeAll(forgetInFlight: true).map(\.name) == ["a2"])
        gate.append(Item(name: "a3", key: "a"))
        #expect(gate.next()?.name == "a3", "forgetting in-flight keys frees them")
    }
}
