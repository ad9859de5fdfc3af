import DequeModule
import Synchronization
import Testing

@testable import Courier

/// The one waiter primitive every transport's `next()` and every close uses.
@Suite("Waiters")
struct WaitersTests {
    struct State: Sendable {
        var items = Deque<Int>()
        var closed = false
        var waiters = Waiters<Int?, Int>()
    }

    final class Box: Sendable {
        let state = Mutex(State())

        func next(as consumer: Int = 0) async throws -> Int? {
            try await Waiters.wait(in: state, \.waiters, tag: consumer, cancelled: .success(nil)) { state in
                if let item = state.items.popFirst() { return .success(item) }
                return state.closed ? .success(nil) : nil
            }
        }

        /// Adds an item and hands it to the longest waiter, resumed after unlocking.
        func add(_ item: Int) {
            let waiter = state.withLock { state -> Waiters<Int?, Int>.Waiter? in
                guard let waiter = state.waiters.popFirst() else {
                    state.items.append(item)
                    return nil
                }
                return waiter
            }
            waiter?.resume(returning: item)
        }

        func close() {
            let ended = state.withLock { state in
                state.closed = true
                return state.waiters.removeAll()
            }
            for waiter in ended { waiter.resume(returning: nil) }
        }

        var waiting: Int { state.withLock { $0.waiters.count } }

        func untilWaiting(_ count: Int) async throws {
            let deadline = ContinuousClock.now + .seconds(10)
            while waiting < count {
                try #require(ContinuousClock.now < deadline, "\(count) waiters never registered")
                try await Task.sleep(for: .milliseconds(1))
            }
        }
    }

    @Test func theFastPathTakesWhatIsThereWithoutRegistering() async throws {
        let box = Box()
        box.add(1)
        box.add(2)
        #expect(try await box.next() == 1)
        #expect(try await box.next() == 2)
        #expect(box.waiting == 0)
    }

    @Test func aWaiterIsResumedByWhatArrivesLater() async throws {
        let box = Box()
        async let item = box.next()
        try await box.untilWaiting(1)
        box.add(7)
        #expect(try await item == 7)
        #expect(box.waiting == 0)
    }

    @Test func competingWaitersAreServedFirstComeFirstServed() async throws {
        let box = Box()
        let first = Task { try await box.next(as: 1) }
        try await box.untilWaiting(1)
        let second = Task { try await box.next(as: 2) }
        try await box.untilWaiting(2)
        #expect(box.state.withLock { $0.waiters.tags } == [1, 2])
        box.add(10)
        box.add(20)
        #expect(try await first.value == 10)
        #expect(try await second.value == 20)
    }

    @Test func cancellationAfterRegistrationEndsTheWaitAndRemovesIt() async throws {
        let box = Box()
        let waiting = Task { try await box.next() }
        try await box.untilWaiting(1)
        waiting.cancel()
        #expect(try await waiting.value == nil)
        #expect(box.waiting == 0)
        box.add(3)  // not lost to the cancelled waiter
        #expect(try await box.next() == 3)
    }

    @Test func cancellationBeforeRegistrationNeverRegisters() async throws {
        let box = Box()
        let waiting = Task {
            // Cancelled before it starts: the handler runs first, then the registration sees it.
            withUnsafeCurrentTask { $0?.cancel() }
            return try await box.next()
        }
        #expect(try await waiting.value == nil)
        #expect(box.waiting == 0)
    }

    @Test func theStepsAgreeWhenCancellationComesFirst() async throws {
        var waiters = Waiters<Int?, Void>()
        let id = waiters.makeID()
        #expect(waiters.cancel(id).map(\.id) == nil, "nothing registered yet")
        // The registration that follows finds the cancellation and does not register.
        var registered = true
        _ = try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<Int?, any Error>) in
            registered = waiters.register(id, tag: (), continuation)
            continuation.resume(returning: nil)
        }
        #expect(!registered)
        #expect(waiters.isEmpty)
    }

    @Test func closeEndsEveryWaiter() async throws {
        let box = Box()
        let waits = (0..<5).map { consumer in Task { try await box.next(as: consumer) } }
        try await box.untilWaiting(5)
        box.close()
        for wait in waits { #expect(try await wait.value == nil) }
        #expect(try await box.next() == nil, "a closed box answers at once")
    }

    @Test func waitersCanBeTakenByTag() async throws {
        let box = Box()
        let one = Task { try await box.next(as: 1) }
        try await box.untilWaiting(1)
        let two = Task { try await box.next(as: 2) }
        try await box.untilWaiting(2)
        let taken = box.state.withLock { $0.waiters.removeAll { $0 == 2 } }
        #expect(taken.map(\.tag) == [2])
        for waiter in taken { waiter.resume(returning: 22) }
        #expect(try await two.value == 22)
        let first = box.state.withLock { $0.waiters.popFirst(where: { $0 == 1 }) }
        first?.resume(throwing: CourierError(.transportClosed, "gone"))
        await #expect(throws: CourierError.self) { try await one.value }
    }
}
