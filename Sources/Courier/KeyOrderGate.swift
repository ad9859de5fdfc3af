import DequeModule

/// Per-key ordering for a stream of waiting messages, for transports and adapters.
///
/// Items leave in arrival order, except that an item whose key already has one in flight
/// (taken and not yet settled) is held back, in order, until ``release(key:)``. Items without a
/// key are never held. With `ordered` false the gate is a plain FIFO.
///
/// Returned items (a nack, a closed consumer) go back to the front with ``returnToFront(_:)``:
/// they are older than everything waiting, including the held-back items of their key.
public struct KeyOrderGate<Element>: Sendable where Element: Sendable {
    // Inlinable, so that adapters in other modules get it specialized for their element type
    // (it is on every message's path).
    @usableFromInline var ready = Deque<Element>()
    @usableFromInline var parked: [String: Deque<Element>] = [:]
    @usableFromInline var busy = Set<String>()
    @usableFromInline let ordered: Bool
    @usableFromInline let key: @Sendable (Element) -> String?

    /// Creates an empty gate; `key` gives an item's ordering key.
    @inlinable
    public init(ordered: Bool = true, key: @escaping @Sendable (Element) -> String?) {
        self.ordered = ordered
        self.key = key
    }

    /// Whether nothing waits in arrival order (held-back items may remain).
    @inlinable
    public var isEmpty: Bool { ready.isEmpty }

    /// How many items wait, held-back ones included.
    @inlinable
    public var count: Int { ready.count + parked.values.reduce(0) { $0 + $1.count } }

    /// Adds an item behind all others.
    @inlinable
    public mutating func append(_ element: consuming Element) {
        ready.append(element)
    }

    /// The next item whose key is free, marking its key in flight; `nil` when none can go.
    @inlinable
    public mutating func next() -> Element? {
        while let element = ready.popFirst() {
            if ordered, let key = key(element) {
                if busy.contains(key) {
                    parked[key, default: []].append(element)
                    continue
                }
                busy.insert(key)
            }
            return element
        }
        return nil
    }

    /// The item of `key` in flight was settled: the next held-back item of that key moves to
    /// the front.
    @inlinable
    public mutating func release(key: String?) {
        guard ordered, let key else { return }
        busy.remove(key)
        guard var waiting = parked.removeValue(forKey: key) else { return }
        if let next = waiting.popFirst() { ready.prepend(next) }
        if !waiting.isEmpty { parked[key] = waiting }
    }

    /// Every waiting item, held-back ones included, without removing any: those in arrival
    /// order first, then the held-back ones of each key in order.
    @inlinable
    public var elements: [Element] {
        var all = Array(ready)
        for key in parked.keys.sorted() { all.append(contentsOf: parked[key]!) }
        return all
    }

    /// Puts an item that was in flight back at the front and frees its key.
    @inlinable
    public mutating func returnToFront(_ element: Element) {
        ready.prepend(element)
        if ordered, let key = key(element) { busy.remove(key) }
    }

    /// Removes the waiting items (held-back ones included) that match `predicate` and returns
    /// them in order; keys in flight stay in flight.
    @inlinable
    public mutating func remove(where predicate: (Element) -> Bool) -> [Element] {
        var removed: [Element] = []
        ready.removeAll { element in
            guard predicate(element) else { return false }
            removed.append(element)
            return true
        }
        for key in parked.keys.sorted() {
            parked[key]!.removeAll { element in
                guard predicate(element) else { return false }
                removed.append(element)
                return true
            }
            if parked[key]!.isEmpty { parked[key] = nil }
        }
        return removed
    }

    /// Removes every waiting item (held-back ones included) and returns them; with
    /// `forgetInFlight`, keys in flight are freed too (their items will not be settled).
    @inlinable
    public mutating func removeAll(forgetInFlight: Bool) -> [Element] {
        var removed = Array(ready)
        for (_, waiting) in parked { removed.append(contentsOf: waiting) }
        ready.removeAll()
        parked.removeAll()
        if forgetInFlight { busy.removeAll() }
        return removed
    }
}
